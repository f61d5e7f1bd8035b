# App image for docker-compose.yml: the `sentiment` CLI (init, worker, dashboard, ...).
# Not built on our dev/CI machines (no Docker engine there); see ops/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the PyTorch CPU index: a CPU-only build of a few hundred MB instead of
# PyPI's CUDA build of several GB. This is what a user with internet access does; our own
# machines reach only PyPI, so their .venv gets PyPI's torch (it runs on the CPU too).
# `pip install .` below then keeps it, since it satisfies pyproject's torch>=2.4.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch

WORKDIR /app
# Dependencies and code in one layer: the project is small next to torch.
COPY pyproject.toml README.md* ./
COPY sentiment_app ./sentiment_app
COPY sentiment_model ./sentiment_model
COPY stream ./stream
COPY storage ./storage
COPY training ./training
COPY configs ./configs
RUN pip install '.[dashboard]'

# Run as a plain user; /models and /app/runs are mount points of named volumes (a fresh named volume
# takes its directory's owner).
RUN useradd --create-home --uid 1000 app && mkdir -p /models /app/runs && chown app:app /models /app/runs
USER app
ENV SENTIMENT_MODELS_DIR=/models

ENTRYPOINT ["sentiment"]
CMD ["--help"]
