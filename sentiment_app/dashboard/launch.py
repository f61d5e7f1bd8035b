"""How `sentiment dashboard` starts Streamlit; kept free of Streamlit imports so the CLI stays fast."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"

# Our defaults, each skipped when its STREAMLIT_* variable is set, so that the environment (e.g. the
# compose file's STREAMLIT_SERVER_ADDRESS=0.0.0.0) beats them; Streamlit ranks flags above variables.
DEFAULTS = {
    "server.port": ("STREAMLIT_SERVER_PORT", "8501"),
    "server.address": ("STREAMLIT_SERVER_ADDRESS", "127.0.0.1"),
    "server.headless": ("STREAMLIT_SERVER_HEADLESS", "true"),
    # No auto-reload of source files (the watcher also trips over torch's lazy modules) ...
    "server.fileWatcherType": ("STREAMLIT_SERVER_FILE_WATCHER_TYPE", "none"),
    # ... no usage statistics sent anywhere, and no "Deploy" developer menu for viewers.
    "browser.gatherUsageStats": ("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false"),
    "client.toolbarMode": ("STREAMLIT_CLIENT_TOOLBAR_MODE", "viewer"),
}


def streamlit_argv(env: Mapping[str, str], port: int | None = None, address: str | None = None) -> list[str]:
    """The `python -m streamlit run` command line: explicit options > STREAMLIT_* variables > defaults."""
    explicit = {"server.port": port, "server.address": address}
    argv = [sys.executable, "-m", "streamlit", "run", str(APP)]
    for option, (variable, default) in DEFAULTS.items():
        value = explicit.get(option)
        if value is None and variable in env:
            continue
        argv.append(f"--{option}={default if value is None else value}")
    return argv
