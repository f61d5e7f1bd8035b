"""How a worker process ends: on request within a deadline, or at once when it must not go on.

Two ways out, both without acknowledging the batch in hand (so a restarted worker replays it, and the
idempotent sinks absorb the replay):

- ``die``: a failure no single record explains (a bug, a sink refusing everything). One log line, exit
  code ``EXIT_UNPINNED``, and no shutdown code runs: faust must not commit, and its supervisor must not
  restart the agent past the batch (an escaped exception makes it skip that batch).
- ``Lifeline``: SIGTERM/SIGINT start a graceful stop (retries give up at once, see ``stream.pipeline``)
  and a timer that ends the process when the deadline passes, whatever still blocks: a thread waiting on
  a sink, faust's own shutdown. Once faust has stopped (and committed what was acknowledged), the
  process ends with ``end_process``: the interpreter's own teardown (joining executor threads, closing
  clients one by one) took seconds more, past the session timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import NoReturn

log = logging.getLogger(__name__)

EXIT_UNPINNED = 70  # EX_SOFTWARE: the worker stopped itself; the batch in hand is replayed on restart


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def end_process(code: int) -> NoReturn:
    """Exit at once with ``code``: no atexit handlers, no joining of threads that may still wait on a sink."""
    _flush_logs()
    os._exit(code)


def die(message: str, code: int = EXIT_UNPINNED) -> NoReturn:
    """Log one line and end the process now: no ack, no commit, no faust shutdown, no agent restart."""
    try:
        log.critical("%s; exiting (code %d)", message.replace("\n", " ")[:1000], code)
    finally:
        end_process(code)


class Lifeline:
    """The worker's stop request: sets ``stop`` for the retry loops and arms the deadline once."""

    def __init__(self, deadline_s: float) -> None:
        self.stop = threading.Event()
        self.deadline_s = deadline_s
        self.in_flight = 0  # batches taken and not yet acknowledged (for the deadline's log line)
        self._armed = False

    def request_stop(self, why: str) -> None:
        self.stop.set()
        if self._armed:
            return
        self._armed = True
        threading.Thread(target=self._expire, args=(why,), name="stop-deadline", daemon=True).start()

    def _expire(self, why: str) -> None:
        time.sleep(self.deadline_s)
        # Exit 0: the stop was asked for; an unacknowledged batch is replayed by the next worker.
        log.warning("%s: still not stopped after %.0fs (%d batch(es) unacknowledged, replayed on restart); "
                    "exiting now", why, self.deadline_s, self.in_flight)
        end_process(0)
