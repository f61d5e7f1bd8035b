"""How a worker process ends (stream.shutdown), in real subprocesses: the stop deadline ends a process that
something still blocks, and ``die`` exits at once with one line and code 70, skipping every exit handler."""

from __future__ import annotations

import subprocess
import sys
import time

from stream.shutdown import EXIT_UNPINNED
from tests.support import REPO


def run(code: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - t0


def test_the_stop_deadline_ends_a_process_that_something_still_blocks() -> None:
    done, took = run(
        "import logging, threading, time\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from stream.shutdown import Lifeline\n"
        "lifeline = Lifeline(deadline_s=1.0)\n"
        "lifeline.in_flight = 1\n"
        "t0 = time.monotonic(); lifeline.request_stop('SIGTERM'); lifeline.request_stop('SIGTERM')\n"
        "assert lifeline.stop.is_set()\n"
        "threading.Thread(target=threading.Event().wait).start()  # a non-daemon thread that never ends\n"
        "threading.Event().wait()\n"
    )
    assert done.returncode == 0, done.stderr
    assert took < 15  # 1 s deadline + interpreter start-up on a loaded machine
    assert "SIGTERM: still not stopped after 1s (1 batch(es) unacknowledged" in done.stderr


def test_die_exits_at_once_with_one_line_and_code_70_skipping_exit_handlers() -> None:
    done, _ = run(
        "import atexit, logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "from stream.shutdown import die\n"
        "try:\n"
        "    die('Redis at r:6379 refused to count a batch (ResponseError: ERR x\\nsecond line)')\n"
        "finally:\n"
        "    print('finally ran')\n"
    )
    assert done.returncode == EXIT_UNPINNED == 70
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["CRITICAL:stream.shutdown:Redis at r:6379 refused to count a batch (ResponseError: ERR x second "
                     "line); exiting (code 70)"]
    assert "atexit ran" not in done.stdout and "finally ran" not in done.stdout
