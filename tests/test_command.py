"""Subprocesses: argument lists, output, and timeouts that kill whole process groups."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cicd import command


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


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


def test_timeout_kills_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    result = command.run(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], timeout=1.0)
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 15
    grandchild = int(pid_file.read_text())
    assert not _alive(grandchild)


def test_group_leftovers_are_killed_after_a_normal_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # The leader exits at once; its background child would otherwise outlive the job.
    result = command.run(["sh", "-c", f"sleep 300 & echo $! > {pid_file}"])
    assert result.ok
    deadline = time.monotonic() + 5
    pid = int(pid_file.read_text())
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_kill_all_reaps_registered_groups() -> None:
    import subprocess

    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    command.register_group(proc.pid)
    command.kill_all()
    assert proc.wait(timeout=10) != 0
    assert not _alive(proc.pid)
    assert os.getpgid(os.getpid()) != proc.pid
