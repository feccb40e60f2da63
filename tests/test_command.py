"""Subprocesses: argument lists, output, and timeouts that kill whole process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from cicd import command, command_output


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_pids(path: Path, count: int) -> list[int]:
    pids = [int(word) for word in path.read_text().split()]
    assert len(pids) == count, f"expected {count} pids in {path}, got {pids}"
    return pids


def _seconds_until_gone(pids: list[int], limit: float = 30.0) -> float:
    """Poll until none of ``pids`` is alive; the monotonic time when that happened."""
    stop = time.monotonic() + limit
    while any(_alive(pid) for pid in pids) and time.monotonic() < stop:
        time.sleep(0.005)
    assert not any(_alive(pid) for pid in pids), f"still alive: {pids}"
    return time.monotonic()


@contextmanager
def _reaped_group(pgid: int) -> Iterator[None]:
    """Whatever a test does, the group it started does not outlive it."""
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_output_and_exit_code_are_returned(tmp_path: Path) -> None:
    result = command.run(["sh", "-c", "echo out; echo err >&2; exit 3"], log_path=tmp_path / "log")
    assert result.returncode == 3 and not result.ok
    assert "out" in result.output and "err" in result.output
    assert "exit 3" in (tmp_path / "log").read_text()


def test_arguments_are_never_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = command.run(["echo", f"; touch {marker}"])
    assert result.ok and not marker.exists()
    assert result.output.strip() == f"; touch {marker}"


def test_timeout_kills_leader_and_children_within_a_second_of_the_deadline(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids"
    script = (
        f"sleep 300 & echo $! >> {pid_file}; sleep 300 & echo $! >> {pid_file};"
        f" echo $$ >> {pid_file}; wait"
    )
    timeout = 2.0
    started = time.monotonic()
    result = command.run(["sh", "-c", script], timeout=timeout)
    returned = time.monotonic()
    deadline = started + timeout
    assert result.timed_out and not result.ok
    pids = _read_pids(pid_file, 3)
    gone = _seconds_until_gone(pids)
    # Before the one kill path, a zombie leader kept the group "alive" for the whole 5 s grace.
    assert gone - deadline < 1.0, f"gone {gone - deadline:.2f}s after the deadline"
    assert returned - deadline < 1.0
    assert result.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_within_a_second_of_the_deadline(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids"
    # An ignored signal stays ignored across fork and exec: the sleep ignores SIGTERM too.
    script = f"trap '' TERM; sleep 300 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait"
    timeout = 1.0
    grace = command.TIMEOUT_GRACE_SECONDS
    started = time.monotonic()
    result = command.run(["sh", "-c", script], timeout=timeout)
    deadline = started + timeout
    assert result.timed_out
    pids = _read_pids(pid_file, 2)
    gone = _seconds_until_gone(pids)
    # SIGTERM is ignored: the group is SIGKILLed once the grace is over, well within 1 s.
    assert grace <= gone - deadline < 1.0, f"gone {gone - deadline:.2f}s after deadline"
    assert result.returncode == -signal.SIGKILL


def test_children_left_by_a_leader_that_exited_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # The leader exits at once; its background child would otherwise outlive the job.
    started = time.monotonic()
    result = command.run(["sh", "-c", f"sleep 300 & echo $! > {pid_file}"])
    assert result.ok
    pid = int(pid_file.read_text())
    # Gone when run() returns, and it returned without waiting for a grace period.
    assert not _alive(pid)
    assert time.monotonic() - started < 1.0


def test_children_that_ignore_sigterm_after_the_leader_exited_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = command.run(["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {pid_file}"])
    assert result.ok
    assert not _alive(int(pid_file.read_text()))


def test_big_output_keeps_only_the_tail_in_memory(tmp_path: Path) -> None:
    megabyte = 1024 * 1024
    program = (
        "import sys\n"
        f"line = ('x' * {megabyte - 1} + '\\n').encode()\n"
        "for _ in range(50): sys.stdout.buffer.write(line)\n"
        "sys.stdout.buffer.write('last line \\u00e9\\n'.encode())\n"
    )
    log = tmp_path / "log"
    tracemalloc.start()
    try:
        result = command.run([sys.executable, "-c", program], log_path=log)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert len(result.output) == command_output.OUTPUT_TAIL_CHARS
    assert result.output.endswith("x\nlast line \u00e9\n")
    # The whole output is in the log, copied without holding it in memory.
    assert log.stat().st_size > 50 * megabyte
    assert peak < 4 * megabyte, f"peak Python allocations {peak / megabyte:.1f} MiB"
    with log.open("rb") as saved:
        saved.seek(-200, os.SEEK_END)
        assert "last line \u00e9\n[cicd] exit 0" in saved.read().decode()


def test_the_tail_does_not_start_with_half_a_character(tmp_path: Path) -> None:
    # Four-byte characters only: the tail read starts in the middle of one.
    program = "import sys; sys.stdout.write('\\U0001F600' * 30001)"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = command.run([sys.executable, "-c", program], env=env)
    assert result.output == "\U0001f600" * command_output.OUTPUT_TAIL_CHARS


def test_timeout_holds_while_the_child_does_not_read_its_stdin() -> None:
    # More than a pipe buffer (64 KiB on Linux) to a child that never reads it.
    finished = threading.Event()
    results: list[command.CommandResult] = []

    def target() -> None:
        results.append(command.run(["sleep", "300"], timeout=0.5, stdin_data="x" * 1_000_000))
        finished.set()

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    try:
        assert finished.wait(5), "run() blocked writing stdin past its timeout"
    finally:
        command.kill_all()  # if it blocked, this frees it
        worker.join(10)
    assert results[0].timed_out


def test_terminate_group_of_a_process_that_is_not_our_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    # A helper starts the group with setsid(1) and never waits for it: once killed,
    # the leader stays a zombie of the helper, which we cannot reap.
    helper_code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen(['setsid', 'sh', '-c', sys.argv[1]])\n"
        "time.sleep(300)\n"
    )
    script = f"sleep 300 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait"
    helper = subprocess.Popen([sys.executable, "-c", helper_code, script])
    try:
        stop = time.monotonic() + 10
        while time.monotonic() < stop:
            if pid_file.exists() and len(pid_file.read_text().split()) == 2:
                break
            time.sleep(0.01)
        child, leader = _read_pids(pid_file, 2)
        pgid = os.getpgid(leader)
        assert pgid == leader == os.getpgid(child) != os.getpgid(0)
        with _reaped_group(pgid):
            started = time.monotonic()
            assert command.terminate_group(pgid, grace=5.0) is True
            took = time.monotonic() - started
            assert not _alive(child) and not _alive(leader)
            assert Path(f"/proc/{leader}").exists(), "the leader should be the helper's zombie"
            assert took < 1.0, f"terminate_group took {took:.2f}s"
    finally:
        helper.kill()
        helper.wait()


def test_terminate_group_reaps_the_leader_and_says_the_group_is_gone() -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with _reaped_group(proc.pid):
        started = time.monotonic()
        assert command.terminate_group(proc.pid, leader=proc) is True
        assert time.monotonic() - started < 1.0
        # Reaped by terminate_group itself: the exit code is kept and no zombie is left.
        assert proc.returncode == -signal.SIGTERM
        assert not Path(f"/proc/{proc.pid}").exists()
    assert command.terminate_group(proc.pid) is True  # nothing left: still True


def test_terminate_group_wakes_a_stopped_process() -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with _reaped_group(proc.pid):
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert command.terminate_group(proc.pid, grace=5.0, leader=proc)
        assert time.monotonic() - started < 1.0
        assert proc.returncode == -signal.SIGTERM


def test_terminate_group_escalates_to_sigkill() -> None:
    program = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    with _reaped_group(proc.pid):
        assert proc.stdout is not None and proc.stdout.readline()  # handler installed
        started = time.monotonic()
        assert command.terminate_group(proc.pid, grace=0.5, leader=proc)
        took = time.monotonic() - started
        assert 0.5 <= took < 1.0
        assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()


def test_kill_all_reaps_registered_groups() -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    command.register_group(proc.pid)
    command.kill_all()
    assert proc.wait(timeout=10) != 0
    assert not _alive(proc.pid)
    assert os.getpgid(os.getpid()) != proc.pid


def test_a_command_started_while_the_run_shuts_down_is_stopped_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kill_all lands between run()'s "closed?" check and register_group: the
    # teardown cannot see the new group, so run() must end it itself.
    pid_file = tmp_path / "pid"
    register = command.register_group

    def teardown_first(pgid: int) -> None:
        command.kill_all(close=True)
        register(pgid)

    monkeypatch.setattr(command, "register_group", teardown_first)
    started = time.monotonic()
    try:
        with pytest.raises(command.Cancelled, match="shutting down"):
            command.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=10)
    finally:
        command.reopen()
    assert time.monotonic() - started < 5
    if pid_file.exists():  # else it was killed before its first line
        _seconds_until_gone(_read_pids(pid_file, 1), limit=1.0)
