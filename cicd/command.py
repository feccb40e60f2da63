"""Run subprocesses: argument lists only, a timeout that kills the whole
process group, and a register of live groups so a cancelled flow can reap them.

Why process groups: a test job runs ``pytest``, which may start servers and
workers of its own. Killing only the direct child leaves those running, and
Prefect's ``timeout_seconds`` does not interrupt tasks running in a thread
pool at all (see shared notes, pitfall 8). Each command therefore runs in a
new session; on timeout we SIGTERM the group, then SIGKILL it.

Because a new session also escapes the worker's ``killpg`` on cancellation
(pitfall 9), every live group is recorded here and :func:`kill_all` is called
from the flows' ``finally`` blocks and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# How long a group gets between SIGTERM and SIGKILL.
TERMINATE_GRACE_SECONDS = 5.0
# Output kept in memory per command; the full output goes to the log file.
OUTPUT_TAIL_CHARS = 20_000

_live_groups: set[int] = set()
_live_lock = threading.Lock()
# Set while a run is being torn down: jobs still running in worker threads must
# not start new processes after their groups were killed.
_closed = threading.Event()


class Cancelled(Exception):
    """A command was not started because its run is shutting down."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def display(self) -> str:
        return " ".join(self.argv)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def terminate_group(pgid: int, grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after ``grace``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def register_group(pgid: int) -> None:
    with _live_lock:
        _live_groups.add(pgid)


def unregister_group(pgid: int) -> None:
    with _live_lock:
        _live_groups.discard(pgid)


def kill_all(close: bool = False) -> None:
    """Terminate every process group started here that is still alive.

    With ``close``, refuse to start new commands until :func:`reopen`.
    """
    if close:
        _closed.set()
    with _live_lock:
        groups = list(_live_groups)
        _live_groups.clear()
    for pgid in groups:
        terminate_group(pgid, grace=2.0)


def reopen() -> None:
    _closed.clear()


def closed() -> bool:
    """True while a run is being torn down (a killed command is then no verdict)."""
    return _closed.is_set()


atexit.register(kill_all, close=True)


def run(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
    stdin_data: str | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and return its combined output.

    Never raises for a non-zero exit: callers decide what a failure means.
    Raises ``FileNotFoundError`` when the program does not exist.

    Output goes to a temporary file, not a pipe: a pipe stays open while any
    background process the command started holds it, so waiting for EOF
    would wait for that daemon too. We wait for the leader, then kill the
    rest of its group.
    """
    argv = tuple(str(a) for a in argv)
    if _closed.is_set():
        raise Cancelled(f"not started, the run is shutting down: {' '.join(argv)}")
    start = time.monotonic()
    with tempfile.TemporaryFile("w+b") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        register_group(proc.pid)
        timed_out = False
        try:
            if stdin_data is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin_data.encode())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                terminate_group(proc.pid)
                proc.wait()
        except BaseException:
            # KeyboardInterrupt, Prefect's termination signal: never leave the group behind.
            terminate_group(proc.pid, grace=2.0)
            raise
        finally:
            unregister_group(proc.pid)
        # The leader is gone; children it left in the group are not wanted.
        terminate_group(proc.pid, grace=1.0)
        duration = time.monotonic() - start
        sink.seek(0)
        out = sink.read().decode("utf-8", errors="replace")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(argv)}\n{out}")
            if timed_out:
                log.write(f"\n[cicd] timed out after {timeout:.0f}s; process group killed\n")
            log.write(f"[cicd] exit {proc.returncode} in {duration:.2f}s\n")
    return CommandResult(
        argv=argv,
        returncode=proc.returncode,
        output=out[-OUTPUT_TAIL_CHARS:],
        duration=duration,
        timed_out=timed_out,
    )
