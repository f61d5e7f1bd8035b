"""The root ``typer`` app, and the one rule for errors: a user's error is one line and exit 2, a bug a traceback."""

from __future__ import annotations

import re
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from sentiment_app.terminal_text import clean
from sentiment_model.errors import UserError

console = Console()


def report_user_error(err: BaseException) -> None:
    """``error: MESSAGE`` in red on stderr: one line, literal (messages hold paths, [brackets], user data)."""
    Console(stderr=True).print(f"error: {clean(err)}", style="red", markup=False, highlight=False, soft_wrap=True)


class UserErrorsExit2(TyperGroup):
    """Every command runs inside this group: a ``UserError`` (an unreachable service is one) is reported on one
    line with exit code 2; anything else propagates with its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            report_user_error(err)
            raise typer.Exit(2) from None


class PlainUsage(TyperCommand):
    """A command whose usage line names a required argument as ``RUN_DIR``, not this typer's ``{run_dir}``
    (set on every command in ``sentiment_app.cli``)."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [re.sub(r"^\{(.+)\}", lambda m: m.group(1).upper(), piece)
                for piece in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    cls=UserErrorsExit2,
    help="Live opinion tracking: stream reviews through a sentiment model into Postgres and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
