"""A bad ``SENTIMENT_*`` value as one line: the variable, the value (unless it may hold a secret), what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError as SourceError

from sentiment_model.errors import UserError

PREFIX, DELIMITER = "SENTIMENT_", "__"
SECRET_HINTS = ("url", "password", "secret", "token", "key")  # their values are never echoed


class SettingsError(UserError):
    """A setting from the environment or ``.env`` that cannot be used; the message names the variable."""


def settings_error(err: ValidationError | SourceError | UnicodeDecodeError) -> SettingsError:
    """The ``SettingsError`` to raise instead of pydantic's multi-line report (``raise ... from None``)."""
    if isinstance(err, UnicodeDecodeError):  # the only file settings read is .env, in the working directory
        env = Path(".env").absolute()
        return SettingsError(f"{env} is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}): "
                             f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {env}")
    if isinstance(err, SourceError):  # a section given as JSON that does not parse
        field = re.search(r'field "(\w+)"', str(err))
        section = PREFIX + (field.group(1).upper() if field else "*")
        return SettingsError(f"{section} is not a JSON object: set its fields one by one instead, as "
                             f"{section}{DELIMITER}FIELD, in the environment or .env")
    problems = []
    for item in err.errors():
        names = [str(p) for p in item["loc"] if isinstance(p, str)]
        variable = PREFIX + DELIMITER.join(names).upper() if names else PREFIX + "*"
        value = item.get("input")
        if isinstance(value, dict):  # a check across fields of a section
            variable, shown = variable + DELIMITER + "*", ""
        elif any(hint in variable.lower() for hint in SECRET_HINTS):
            shown = ""
        else:
            shown = f"={str(value)[:60]!r}"
        expected = (item.get("ctx") or {}).get("expected")
        why = f"allowed: {expected}" if item["type"] == "literal_error" and expected else str(item["msg"])
        problems.append(f"{variable}{shown} is not valid ({why.removeprefix('Value error, ')})")
    return SettingsError("; ".join(problems) + ": fix it in the environment or .env")
