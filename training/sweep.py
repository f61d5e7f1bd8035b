"""Sweeps: several experiment configs run in order, from a folder of YAMLs or a grid file.

A grid file names a ``base`` config (a path relative to the grid file, or an inline mapping) and either
``grid`` (every combination of the listed values) or ``runs`` (a list of explicit overrides), e.g.::

    base: baseline.yaml
    runs:
      - {name: lr-1e-5, learning_rate: 1.0e-5}
      - {name: freeze-4, freeze_layers: 4}

Dotted keys (``data.max_train_samples``) reach into nested settings.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from training.config import ConfigError, ExperimentConfig, config_from_dict, load_config, read_yaml, set_dotted

SWEEP_KEYS = {"base", "grid", "runs", "name"}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expand_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> list[ExperimentConfig]:
    """The configs a sweep will run, validated up front so a typo fails before hours of training."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if not files:
            raise ConfigError(f"{path}: no *.yaml configs in this folder")
        return [load_config(f, overrides) for f in files]
    spec = read_yaml(path)
    unknown = set(spec) - SWEEP_KEYS
    if "base" not in spec or unknown:
        raise ConfigError(f"{path}: a sweep file needs `base` and `grid` or `runs`"
                          + (f"; unknown key(s): {sorted(unknown)}" if unknown else ""))
    base = spec["base"]
    base_data = read_yaml(path.parent / base) if isinstance(base, str) else copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        set_dotted(base_data, key, value)
    prefix = spec.get("name") or base_data.get("name", "sweep")
    variants: list[dict[str, Any]] = []
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise ConfigError(f"{path}: grid must map setting names to lists of values")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            name = prefix + "-" + "-".join(f"{k.split('.')[-1]}{_short(v)}" for k, v in zip(keys, combo, strict=True))
            variants.append({"name": name, **dict(zip(keys, combo, strict=True))})
    for i, run in enumerate(spec.get("runs") or []):
        if not isinstance(run, dict):
            raise ConfigError(f"{path}: runs[{i}] must be a mapping of overrides")
        variants.append({"name": f"{prefix}-{i + 1}", **run})
    if not variants:
        raise ConfigError(f"{path}: the sweep is empty; add `grid` or `runs`")
    configs = []
    for i, variant in enumerate(variants):
        data = copy.deepcopy(base_data)
        for key, value in variant.items():
            set_dotted(data, key, value)
        configs.append(config_from_dict(data, f"{path} (run {i + 1}: {variant['name']})"))
    return configs
