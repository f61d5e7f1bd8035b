"""Write a file so that it is either whole or untouched: a temporary file beside it, renamed on success."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from sentiment_model.errors import UserError


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same resolved path, or (hard links) the same inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_target(dst: Path) -> Path:
    """The file ``dst`` writes to (a symlink's target), or a ``UserError`` when it cannot be one."""
    target = dst.resolve()
    if target.is_dir():
        raise UserError(f"{dst} is a folder: give a file name for the output")
    if not target.parent.is_dir():
        raise UserError(f"cannot write {dst}: the folder {target.parent} does not exist")
    return target


@contextmanager
def atomic_output(dst: Path) -> Iterator[TextIO]:
    """A UTF-8 text file that becomes ``dst`` (through a symlink: its target) only when the block ends without
    an exception; otherwise it is deleted and an existing ``dst`` is left as it was. Keeps ``dst``'s mode."""
    target = check_target(dst)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write in {target.parent}: {e.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            mode = stat.S_IMODE(target.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
