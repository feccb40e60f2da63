"""Run subprocesses: argument lists only, a timeout that kills the whole
process group, and a register of live groups so a cancelled flow can reap them.

Why process groups: a test job runs ``pytest``, which may start servers and
workers of its own. Killing only the direct child leaves those running, and
Prefect's ``timeout_seconds`` does not interrupt tasks running in a thread
pool at all ("Task timeout behavior" in
https://docs.prefect.io/v3/how-to-guides/workflows/write-and-run). Each command
therefore runs in a new session; on timeout :func:`terminate_group` SIGTERMs
the group, then SIGKILLs it.

Because a new session also escapes the worker's ``killpg`` on cancellation,
every live group is recorded here and :func:`kill_all` is called from the
flows' ``finally`` blocks and at interpreter exit.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cicd import masking, ownership
from cicd.command_output import OutputFollower, log_footer

# How long a group gets between SIGTERM and SIGKILL by default.
TERMINATE_GRACE_SECONDS = 5.0
# A timed-out command already had its whole timeout: it gets half a second to
# flush (coverage writes its data file on SIGTERM when configured to) and is then
# SIGKILLed, so that every process of a timed-out job is gone within a second of
# its deadline whether or not it honours SIGTERM. GitHub's runner, by contrast,
# waits 7.5 s + 2.5 s on cancellation
# (https://docs.github.com/en/actions/managing-workflow-runs/canceling-a-workflow).
TIMEOUT_GRACE_SECONDS = 0.5
# How long we wait for SIGKILLed processes to be gone (they can sit in
# uninterruptible sleep, e.g. on a hung NFS mount) before giving up.
KILL_WAIT_SECONDS = 1.0
# Polling of a dying group starts fast (most processes exit within a few ms
# of SIGTERM) and backs off; a check that scans /proc waits at least
# _POLL_COST_FACTOR times its own cost, so polling takes at most about a
# quarter of a core however many processes there are.
_FIRST_POLL_SECONDS = 0.001
_MAX_POLL_SECONDS = 0.01
_POLL_COST_FACTOR = 3
_PROC = Path("/proc")

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
    # Lines of output in all (``output`` holds only the last of them).
    lines: int = 0
    # Where the whole (masked, bounded) output was written, when it was.
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def display(self) -> str:
        return " ".join(self.argv)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


# --- killing a process group -------------------------------------------------


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no process of it exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _stat_fields(stat: str) -> tuple[str, int, int]:
    """(state, ppid, pgrp) from a /proc/<pid>/stat line.

    The command name is in parentheses and may itself hold spaces and ``)``,
    so fields are counted from the last ``)`` (proc(5):
    https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html).
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[2])


def _read_small(path: str) -> str:
    # One read(2), no buffered file object: a scan reads every process's stat
    # and /proc reads are slow on a VM (tens of microseconds each).
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def _live_members(pgid: int) -> list[int]:
    """PIDs of the group's members that are not zombies.

    ``killpg(pgid, 0)`` succeeds as long as any member exists, zombies
    included: a leader that exited but was not reaped by its parent (us, or a
    helper that never waits) would keep a dead group "alive" until SIGKILL.
    Zombies that were reparented to us (when we are a subreaper or PID 1) are
    reaped here, since nobody else will.
    """
    members: list[int] = []
    me = os.getpid()
    for name in os.listdir(_PROC):
        if not name.isdigit():
            continue
        try:
            state, ppid, pgrp = _stat_fields(_read_small(f"{_PROC}/{name}/stat"))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if pgrp != pgid:
            continue
        pid = int(name)
        if state != "Z":
            members.append(pid)
        elif ppid == me and pid != pgid:
            # Not the leader (its Popen object reaps it and keeps its exit code).
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return members


def _group_gone(pgid: int, leader: subprocess.Popen[bytes] | None) -> bool:
    if leader is not None and leader.poll() is None:
        return False  # the leader itself still runs: no need to look further
    if not _signal_group(pgid, 0):
        return True
    if not _PROC.is_dir():
        return False  # no /proc (not Linux): the signal check is all there is
    return not _live_members(pgid)


def _wait_gone(pgid: int, seconds: float, leader: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + seconds
    pause = _FIRST_POLL_SECONDS
    while True:
        checked = time.monotonic()
        if _group_gone(pgid, leader):
            return True
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return False
        time.sleep(min(max(pause, _POLL_COST_FACTOR * (now - checked)), left))
        pause = min(pause * 2, _MAX_POLL_SECONDS)


def terminate_group(
    pgid: int,
    grace: float = TERMINATE_GRACE_SECONDS,
    *,
    leader: subprocess.Popen[bytes] | None = None,
) -> bool:
    """SIGTERM a process group, SIGKILL whatever is left after ``grace``.

    Returns as soon as no live process of the group is left (zombies do not
    count), and True then; False only when SIGKILLed processes did not go
    away within :data:`KILL_WAIT_SECONDS`. ``leader`` is the group leader's
    ``Popen`` when it is our child: it is reaped here, so its exit code is kept
    and it does not linger as a zombie.
    """
    try:
        if not _signal_group(pgid, signal.SIGTERM):
            return _group_gone(pgid, leader)
        # A stopped process only acts on SIGTERM once continued; SIGKILL would
        # get it anyway, but only after the whole grace. systemd does the same
        # (https://www.freedesktop.org/software/systemd/man/latest/systemd.kill.html).
        _signal_group(pgid, signal.SIGCONT)
        if _wait_gone(pgid, grace, leader):
            return True
        _signal_group(pgid, signal.SIGKILL)
        return _wait_gone(pgid, KILL_WAIT_SECONDS, leader)
    except PermissionError:
        # A member we may not signal (it changed its uid): not ours to kill.
        return False


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


# --- running a command --------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
    stdin_data: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and return the tail of its combined output.

    Never raises for a non-zero exit: callers decide what a failure means.
    Raises ``FileNotFoundError`` when the program does not exist.

    Output goes to a temporary file, not a pipe: a pipe stays open while any
    background process the command started holds it, so waiting for EOF
    would wait for that daemon too. We wait for the leader, then kill the
    rest of its group. While it runs, the output is followed line by line
    (:class:`OutputFollower`): masked into ``log_path``, passed to
    ``on_line`` (from another thread) and kept in memory only as a tail.
    """
    argv = tuple(str(a) for a in argv)
    if _closed.is_set():
        raise Cancelled(masking.mask(f"not started, the run is shutting down: {' '.join(argv)}"))
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(tempfile.TemporaryFile("w+b"))
        log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(log_path.open("a", encoding="utf-8"))
            log.write(masking.mask(f"$ {' '.join(argv)}\n"))
        follower = OutputFollower(sink.fileno(), log, on_line)
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
        # Its group outlives a SIGKILLed run otherwise: a later command reclaims it.
        held = ownership.claim("process-group", processes=(ownership.ProcessRef.of(proc.pid),))
        if _closed.is_set():
            # kill_all ran between our check above and register_group: it did
            # not see this group, so it is ours to end.
            terminate_group(proc.pid, grace=0.0, leader=proc)
            unregister_group(proc.pid)
            held.release()
            raise Cancelled(
                masking.mask(f"stopped at its start, the run is shutting down: {' '.join(argv)}")
            )
        follower.start()
        timed_out = False
        group_gone = True
        try:
            try:
                # communicate() feeds stdin under the same timeout: a plain
                # write would block forever on a child that never reads it.
                proc.communicate(
                    stdin_data.encode() if stdin_data is not None else None, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                timed_out = True
                group_gone = terminate_group(proc.pid, TIMEOUT_GRACE_SECONDS, leader=proc)
                proc.wait()
            else:
                # The leader is gone; children it left in the group are not wanted.
                group_gone = terminate_group(proc.pid, grace=1.0, leader=proc)
        except BaseException:
            # KeyboardInterrupt, Prefect's termination signal: never leave the group behind.
            terminate_group(proc.pid, grace=2.0, leader=proc)
            with contextlib.suppress(Exception):  # the interruption is what to report
                follower.finish()
            raise
        finally:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            unregister_group(proc.pid)
            held.release()
        follower.finish()
        duration = time.monotonic() - start
        if log is not None:
            footer = log_footer(follower)
            if timed_out:
                footer += f"\n[cicd] timed out after {timeout:g}s; process group killed\n"
            if not group_gone:
                footer += "[cicd] some processes of its group did not exit after SIGKILL\n"
            footer += f"[cicd] exit {proc.returncode} in {duration:.2f}s\n"
            log.write(footer)
    return CommandResult(
        argv=argv,
        returncode=proc.returncode,
        output=follower.output(),
        duration=duration,
        timed_out=timed_out,
        lines=follower.lines,
        log_path=log_path,
    )
