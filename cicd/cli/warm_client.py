"""The light CLI's side of the warm runner (design: ``cicd/cli/warm_runner.py``):
find or start the runner of this environment, hand it the run, pass signals
on, and exit with the child's code as soon as it arrives.

Imports no Prefect: this is what makes a run through the runner cheap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from cicd import ownership
from cicd.cli import warm_state
from cicd.locking import file_lock
from deployments.stack_processes import spawn, stop_process
from deployments.stack_state import ProcessRecord, StopResult, is_running

# A runner imports Prefect and the flows: seconds, more on a loaded machine.
START_TIMEOUT = 120.0
PING_TIMEOUT = 5.0
STOP_WAIT = 5.0
POLL = 0.02
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Unavailable(Exception):
    """The runner cannot take this run (it is then run in-process)."""


class LostChild(RuntimeError):
    """The child took the run and ended without an exit code."""


def runner_argv(directory: Path, key: str) -> list[str]:
    # -P: the runner's directory is not put on sys.path (a `cicd` folder there
    # must not shadow the package).
    return [sys.executable, "-P", "-m", "cicd.cli.warm_runner", "serve", str(directory), key]


def ping(directory: Path, timeout: float = PING_TIMEOUT) -> dict[str, object] | None:
    """The runner's answer (its key and pid), or None when nothing answers."""
    try:
        with warm_state.connect(directory, timeout) as sock:
            warm_state.send(sock, {"op": "ping"})
            return warm_state.receive(sock)
    except (OSError, ValueError):
        return None


def _process(record: warm_state.RunnerRecord) -> ProcessRecord:
    return ProcessRecord("warm-runner", record.pid, record.start_time, [], record.log)


def _stop_recorded(directory: Path) -> StopResult | None:
    """Ask the recorded runner to stop (over its socket: right in any PID
    namespace); signal it by pid only when it is in ours and still the same
    process. Children running a run are not touched."""
    record = warm_state.read_record(directory)
    outcome = "gone"
    try:
        with warm_state.connect(directory, PING_TIMEOUT) as sock:
            warm_state.send(sock, {"op": "stop"})
            if warm_state.receive(sock) is not None:
                outcome = "stopped"
    except (OSError, ValueError):
        pass
    if record is not None:
        local = record.pid_ns == ownership.pid_namespace()
        deadline = time.monotonic() + STOP_WAIT
        while local and is_running(_process(record)) and time.monotonic() < deadline:
            time.sleep(POLL)
        if local and is_running(_process(record)):
            outcome = stop_process(_process(record), grace=STOP_WAIT).outcome
    (directory / warm_state.RECORD_FILE).unlink(missing_ok=True)
    (directory / warm_state.SOCKET_FILE).unlink(missing_ok=True)
    if record is None and outcome == "gone":
        return None
    return StopResult("warm-runner", record.pid if record else 0, outcome)


def stop() -> list[StopResult]:
    """``cicd down``: stop the recorded runner; nothing when there is none."""
    directory = warm_state.state_dir()
    with file_lock(directory / "start.lock"):
        result = _stop_recorded(directory)
    return [result] if result is not None else []


def ensure(directory: Path, key: str, note: Callable[[str], None]) -> None:
    """A runner for ``key`` answers on the socket when this returns."""
    with file_lock(directory / "start.lock"):
        answer = ping(directory)
        if answer is not None and answer.get("key") == key:
            return
        _stop_recorded(directory)  # another key, hung, or dead
        note("starting the warm runner (imports Prefect once, kept for the next runs) ...")
        process = spawn(
            "runner", runner_argv(directory, key), dict(os.environ), directory, cwd=directory
        )
        with (directory / warm_state.STARTED_LOG).open("a", encoding="utf-8") as log:
            log.write(f"{process.pid} {process.start_time} {key}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while (answer := ping(directory)) is None or answer.get("key") != key:
            if not is_running(process):
                raise Unavailable(f"it exited while starting (see {process.log})")
            if time.monotonic() > deadline:
                stop_process(process, grace=STOP_WAIT)
                raise Unavailable(f"it did not start within {START_TIMEOUT:.0f} s")
            time.sleep(POLL)
        record = warm_state.RunnerRecord(
            key, process.pid, process.start_time, ownership.pid_namespace(), process.log
        )
        warm_state.write_record(directory, record)


@contextlib.contextmanager
def forwarding(sock: socket.socket) -> Iterator[None]:
    """While the run is on, a signal to this process goes to the child."""

    def forward(signum: int, frame: FrameType | None) -> None:
        del frame
        # The child may be gone already: its verdict (or EOF) is on its way.
        with contextlib.suppress(OSError):
            warm_state.send(sock, {"signal": signum})

    previous = {number: signal.signal(number, forward) for number in FORWARDED}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _hand_over(directory: Path, request: dict[str, Any]) -> socket.socket:
    """The connection of a child that took the run."""
    sock = warm_state.connect(directory)
    try:
        warm_state.send(sock, {"op": "run", **request}, [0, 1, 2])
        answer = warm_state.receive(sock)
    except BaseException:
        sock.close()
        raise
    if answer is None or "started" not in answer:
        sock.close()
        reason = answer.get("error") if answer else "it closed the connection"
        raise Unavailable(str(reason))
    return sock


def run(argv: list[str], repo: str | None, api_url: str, note: Callable[[str], None]) -> int | None:
    """The run's exit code through the runner; None (said in one stderr line)
    when the runner cannot be reached or started: the caller runs in-process."""
    directory = warm_state.state_dir()
    request: dict[str, Any] = {
        "argv": argv,
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "repo": repo,
        "api_url": api_url,
    }
    key = warm_state.environment_key(os.environ, api_url)
    sock: socket.socket | None = None
    reason = ""
    for _attempt in range(2):  # a runner that retired between the check and the request
        try:
            ensure(directory, key, note)
            sock = _hand_over(directory, {**request, "key": key})
            break
        except (OSError, ValueError, Unavailable) as exc:
            reason = str(exc) or type(exc).__name__
    if sock is None:
        print(f"cicd: warm runner unavailable ({reason}): running in this process", file=sys.stderr)
        return None
    with sock, forwarding(sock):
        while True:
            message = warm_state.receive(sock)
            if message is None:
                raise LostChild(
                    "the run's process ended without an exit code "
                    f"(see {directory / warm_state.LOG_FILE})"
                )
            if "exit" in message:
                return int(message["exit"])
