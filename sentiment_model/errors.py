"""The project's one exception root.

``UserError`` and its subclasses are mistakes a user can fix (a bad config, an unknown version, a missing
model): the CLI prints their message on one line and exits 2. Any other exception is a bug and keeps its
traceback. They deliberately do not subclass ``ValueError``, so ``except ValueError`` never hides a bug.
"""

from __future__ import annotations


class SentimentError(Exception):
    """Root of every exception this project raises on purpose."""


class UserError(SentimentError):
    """Something the user can fix; the message says what is wrong and what to do."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """No model where one was expected (also a ``FileNotFoundError``, for callers that treat it as one)."""
