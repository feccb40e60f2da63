"""What a run does for people once its verdict is known, off the path to that
verdict: the jobs' and the run's Prefect artifacts, the removal of its workspace.

An artifact is one request to the Prefect API each (tens of milliseconds on a
local server, more on a busy or remote one). Made in the job's or the flow's
thread they held up every job's end and the flow's return, though nothing
after them reads them. Here each is sent from a thread of its own, started
with a copy of the caller's context (``contextvars``: the flow or task run the
artifact belongs to, as Prefect's ``get_run_context`` reads it), while the job
or the flow goes on.

They are awaited, not dropped: :func:`wait` before whoever reads them (a test,
a CLI that prints them), and at the latest at the process's exit (``atexit``),
so a deployment run on a worker, whose process ends when its flow does, still
publishes them before it ends. A publication that fails, or is still under way
after :data:`WAIT_SECONDS` at exit, is logged; it never changes a verdict,
which is computed before and without it.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

# How long the process's exit waits for publications still under way: a
# Prefect client request has its own timeout and retries; this bounds them all.
WAIT_SECONDS: Final = 30.0

_log = logging.getLogger("cicd.deferred")
_lock = threading.Condition()
_running: dict[int, str] = {}
_next = 0


def defer(what: str, publish: Callable[[], object]) -> None:
    """Run ``publish`` now in a thread of its own, in a copy of this context;
    ``what`` names it in the log when it fails or is still running at exit."""
    global _next
    context = contextvars.copy_context()
    with _lock:
        _next += 1
        token = _next
        _running[token] = what

    def run() -> None:
        try:
            context.run(publish)
        except Exception as exc:
            # The API may be busy or gone: the verdict stands, the journal and
            # the report files keep what the artifact would have shown.
            _log.warning("%s failed: %s", what, exc)
        finally:
            with _lock:
                del _running[token]
                _lock.notify_all()

    # A daemon thread: the exit waits for it in ``_wait_at_exit``, bounded,
    # instead of for ever as the interpreter would for a non-daemon one.
    threading.Thread(target=run, name=f"cicd-deferred-{token}", daemon=True).start()


def pending() -> list[str]:
    with _lock:
        return list(_running.values())


def wait(timeout: float = WAIT_SECONDS) -> list[str]:
    """Wait until every deferred publication ended; the ones still running after
    ``timeout`` seconds (empty when all ended)."""
    deadline = time.monotonic() + timeout
    with _lock:
        while _running:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _lock.wait(left)
        return list(_running.values())


def _wait_at_exit() -> None:
    left = wait(WAIT_SECONDS)
    if left:
        _log.warning("still under way after %.0f s, given up at exit: %s", WAIT_SECONDS, left)


# Registered at import, after Prefect's own exit hooks (this module imports
# Prefect-using code later): atexit runs hooks last-in first-out, so these
# publications end before Prefect's log and event workers flush and stop.
atexit.register(_wait_at_exit)
