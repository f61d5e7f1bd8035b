"""Experiments and models: the tracked training runs, their confusion matrices, and which model is live."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import ProgrammingError

from sentiment_app.dashboard.ui import engine, load_settings, reaching, show_unavailable
from sentiment_app.terminal_text import markdown_literal
from stream.services import ServiceUnavailable
from stream.settings import Settings

SUMMARY = ["run_id", "name", "base_model", "test_accuracy", "test_macro_f1", "test_macro_recall", "val_macro_f1",
           "epochs", "learning_rate", "class_weights", "train_time_s", "device", "run_dir"]


def experiments_frame(csv_path: Path) -> pd.DataFrame:
    """The experiment tracker's CSV as a table (numbers as numbers); empty when no run was recorded."""
    from training.tracker import read_runs

    frame = pd.DataFrame(read_runs(csv_path))
    for col in frame.columns:
        numeric = pd.to_numeric(frame[col], errors="coerce")
        if numeric.notna().sum() and numeric.notna().sum() == (frame[col] != "").sum():
            frame[col] = numeric
    return frame


def domain_frame(csv_path: Path) -> pd.DataFrame:
    """The per-domain test rows beside the tracker CSV, domains grouped (as `sentiment experiments` shows them)."""
    from training.tracker import domain_table_rows, domains_csv, read_runs

    cols = ["domain", "name", "seed", "run_id", "rows", "over_window", "macro_f1", "macro_recall", "accuracy"]
    frame = pd.DataFrame(domain_table_rows(read_runs(domains_csv(csv_path))), columns=cols)
    for col in ("macro_f1", "macro_recall", "accuracy"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").round(4)
    return frame


def comparison_png(csv_path: Path) -> bytes | None:
    """The tracker's own bar chart of the main test metrics (the `sentiment experiments --plot` figure),
    drawn again only when the CSV changes."""
    return _plot(str(csv_path), csv_path.stat().st_mtime_ns if csv_path.exists() else 0)


@st.cache_data(show_spinner=False, max_entries=16)
def _plot(csv_path: str, mtime_ns: int) -> bytes | None:
    from training.tracker import plot_runs, read_runs

    rows = read_runs(Path(csv_path))
    if not rows:
        return None
    with tempfile.TemporaryDirectory(prefix="dashboard-plot-") as tmp:
        return plot_runs(rows, Path(tmp) / "runs.png").read_bytes()


FIGURES = {"confusion_matrix.png": "confusion matrix (test split)",
           "reliability.png": "reliability diagram (scores vs. accuracy, before and after calibration)"}


def run_figures(runs_root: Path, frame: pd.DataFrame) -> dict[str, dict[str, Path]]:
    """run id -> its figures (``FIGURES`` that exist: the confusion matrix, the reliability diagram of
    ``training.calibration``), for tracked runs and any other run dir under ``runs_root``, newest first."""
    dirs = {p.parent.name: p.parent for name in FIGURES for p in runs_root.glob(f"*/{name}")}
    for run_id, run_dir in zip(frame.get("run_id", []), frame.get("run_dir", []), strict=True):
        if run_dir and any((Path(run_dir) / name).exists() for name in FIGURES):
            dirs[str(run_id)] = Path(run_dir)
    return {k: {name: dirs[k] / name for name in FIGURES if (dirs[k] / name).exists()}
            for k in sorted(dirs, reverse=True)}


@dataclass(frozen=True)
class CurrentModel:
    how: str  # why this one: the registry, the variable, or the `current` link
    path: Path | None  # None: no model
    target: Path | None  # where it really lives (links resolved)
    version: str | None
    training_run: dict[str, object] | None


def current_model(settings: Settings) -> CurrentModel:
    """The model the workers, `classify` and this dashboard serve: ``stream.serving.serving_model``'s answer."""
    from sentiment_model.artifact import RunInfo
    from sentiment_model.errors import ModelNotFoundError
    from stream.serving import serving_model

    try:
        ref, source = serving_model(settings)
    except ModelNotFoundError:
        return CurrentModel(f"the `{settings.models_dir / 'current'}` link", None, None, None, None)
    how = {"registry": "the model registry (production)", "pinned": "SENTIMENT_MODEL__DIR",
           "current": f"the `{settings.models_dir / 'current'}` link"}[source]
    return CurrentModel(how, ref.artifact_dir, ref.artifact_dir.resolve(), ref.version,
                        RunInfo.read(ref.artifact_dir).raw or None)


def local_models(models_dir: Path) -> pd.DataFrame:
    """Model directories under ``models_dir``, the `current` link included."""
    from sentiment_model.artifact import is_model_dir

    rows = [{"name": p.name, "path": str(p.resolve()), "link": p.is_symlink()}
            for p in sorted(models_dir.glob("*")) if is_model_dir(p)]
    return pd.DataFrame(rows, columns=["name", "path", "link"])


def _experiments(roots: list[Path]) -> None:
    st.subheader("Experiments")
    frames = {root: experiments_frame(root / "experiments.csv") for root in roots}
    for root, frame in frames.items():
        if frame.empty:
            continue
        csv_path = root / "experiments.csv"
        st.markdown(f"**`{csv_path}`** — {len(frame)} run(s)")
        st.dataframe(frame[[c for c in SUMMARY if c in frame.columns]], hide_index=True)
        with st.expander("all columns"):
            st.dataframe(frame, hide_index=True)
        per_domain = domain_frame(csv_path)
        if not per_domain.empty:
            st.markdown("test score per domain (a mixture's sources, or a model scored with `sentiment domains`)")
            st.dataframe(per_domain, hide_index=True)
        png = comparison_png(csv_path)
        if png:
            st.image(png, caption=f"test metrics per run, from {csv_path}", width=520)
    empty = [str(root / "experiments.csv") for root, frame in frames.items() if frame.empty]
    if len(empty) == len(frames):
        st.info(f"No runs recorded in {', '.join(f'`{p}`' for p in empty) or 'any run directory'}. Train one with "
                "`make demo` or `sentiment train configs/demo.yaml`: both write to the models home's runs/ "
                "(SENTIMENT_MODELS_DIR).", icon=":material/info:")
    elif empty:
        st.caption(f"Nothing recorded in {', '.join(f'`{p}`' for p in empty)}.")
    figures: dict[str, dict[str, Path]] = {}
    for root, frame in frames.items():
        figures |= run_figures(root, frame)
    st.subheader("Confusion matrices and reliability diagrams")
    if not figures:
        st.info("No run has a confusion_matrix.png yet (a run writes it when it finishes).")
        return
    chosen = st.multiselect("runs", list(figures), list(figures)[:1])  # no key: new runs reset the choice
    for run_id in chosen:
        st.markdown(f"**{markdown_literal(run_id)}**")
        # The reliability diagram has a panel per split (validation, test): twice the matrix's width.
        for column, (name, caption) in zip(st.columns([1, 2], gap="large"), FIGURES.items(), strict=True):
            if name in figures[run_id]:
                column.image(str(figures[run_id][name]), caption=caption, width="stretch")
            elif name == "reliability.png":
                column.caption("No reliability diagram for this run: `sentiment calibrate RUN_DIR` draws one "
                               "(runs trained with calibration have it).")
            else:
                column.caption("No confusion matrix for this run.")


def _models(settings: Settings) -> None:
    st.subheader("Models")
    current = current_model(settings)
    if current.path is None:
        st.warning(f"No model configured: no production version and {current.how} has no model. Run `make demo`, "
                   "train one with `sentiment train configs/baseline.yaml`, or set SENTIMENT_MODEL__DIR.")
    else:
        st.markdown(f"**Current model:** `{current.version}` — chosen by {current.how}: `{current.path}`"
                    + (f" → `{current.target}`" if current.target != current.path else ""))
        if current.training_run:
            st.json(current.training_run, expanded=False)
    _registry(settings)
    models = local_models(settings.models_dir)
    if models.empty:
        st.caption(f"No model directories under `{settings.models_dir}`.")
    else:
        st.dataframe(models, hide_index=True, key="models_table")


def registry_frames(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The registry's versions (newest first) and its latest promotion decisions."""
    from storage import registry

    versions = pd.DataFrame(
        [{"version": v.version, "stage": v.stage, "eval set": v.eval_set, "macro-F1": v.score,
          "created": v.created_at, "promoted": v.promoted_at, "artifact": str(v.artifact_dir)}
         for v in registry.list_versions(engine)],
        columns=["version", "stage", "eval set", "macro-F1", "created", "promoted", "artifact"])
    return versions, pd.DataFrame(registry.decisions(engine, limit=10))


def _registry(settings: Settings) -> None:
    st.markdown("**Model registry** (`sentiment models list|publish|promote|rollback`)")
    eng, address = engine(settings)
    try:
        with reaching("Postgres", address):
            versions, decisions = registry_frames(eng)
    except ServiceUnavailable as e:
        show_unavailable(e)
        return
    except ProgrammingError:
        st.info("No model registry in this database yet: run `sentiment init`.")
        return
    if versions.empty:
        st.info("No published model versions: `sentiment models publish RUN_DIR`. Workers serve "
                f"SENTIMENT_MODEL__DIR when set, else `{settings.models_dir / 'current'}`.")
        return
    production = versions[versions["stage"] == "production"]["version"].tolist()
    st.markdown(f"In production: `{production[0]}`" if production else "No version is in production.")
    st.dataframe(versions, hide_index=True, key="registry_versions")
    if not decisions.empty:
        st.caption("latest promotion decisions")
        st.dataframe(decisions, hide_index=True, key="registry_decisions")


def render() -> None:
    st.title("Experiments and models")
    settings = load_settings()
    # `sentiment train` and `make demo` both write to the models home's runs/ (``Settings.runs_dir``).
    roots = st.sidebar.text_input("run directories (comma-separated)", str(settings.runs_dir()), key="runs_roots")
    try:
        _experiments([Path(r.strip()).expanduser() for r in roots.split(",") if r.strip()])
    except OSError as e:  # a root that cannot be read: say which, keep the models section
        st.error(f"Cannot read the run directories: {markdown_literal(e)}. Fix the path in the sidebar.",
                 icon=":material/error:")
    st.divider()
    _models(settings)
