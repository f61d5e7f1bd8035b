"""The `sentiment` command: every command of the project under one root.

Heavy imports (torch, faust) happen inside the commands that need them. The command modules register
on ``root.app``; the training commands (``cli.training``) and ``sentiment models`` are mounted here.
A ``UserError`` (or an unreachable service) becomes one line on stderr and exit code 2 (``root``);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging

from typer.core import TyperCommand

# Import order = registration order = the order of `sentiment --help`.
# isort: off
from sentiment_app.cli import stack  # noqa: F401  (init, worker, produce, status, demo, dashboard)
from sentiment_app.cli import data  # noqa: F401  (trends, dlq, sql, reviews, feedback, classify)
from sentiment_app.cli import lifecycle  # noqa: F401  (refresh, drift)
# isort: on
from sentiment_app.cli.lifecycle import drift_app
from sentiment_app.cli.models import app as models_app
from sentiment_app.cli.root import PlainUsage, app
from sentiment_app.cli.training import app as training_app

for command in training_app.registered_commands:  # sentiment train | sweep | evaluate | experiments
    app.registered_commands.append(command)
app.add_typer(models_app, name="models")  # sentiment models list | publish | promote | rollback | shadow | compare
for typer_app in (app, models_app, drift_app):  # usage lines name arguments as FILE, not typer's {FILE}
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = PlainUsage


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its retries are reported by us, once
    app()
