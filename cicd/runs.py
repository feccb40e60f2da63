"""A pipeline run's directory (logs, reports) and the cleanup that survives
failure and cancellation: whatever a run started is killed and its workspaces
deleted on any exit."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicd import command, ownership, paths, reclaim
from cicd.git import Checkout, remove_workspace
from cicd.results import JobResult, PipelineReport

JOURNAL = "jobs.jsonl"
ATTEMPT = "attempt.json"
_journal_lock = threading.Lock()
# The run directories this process opened, newest last: `cicd run` reads their
# journals when the control plane is gone (cicd/cli/run_watch.py).
_opened: list[Path] = []


def opened_directories() -> list[Path]:
    return list(_opened)


def read_journal(directory: Path) -> list[dict[str, Any]]:
    """Every job of a run, in the order planned: its result as ``to_json`` gives
    it once it ended, else ``{"name": ..., "state": "planned"}``."""
    jobs: dict[str, dict[str, Any]] = {}
    try:
        lines = (directory / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        if entry.get("state") != "planned" or entry["name"] not in jobs:
            jobs[entry["name"]] = entry
    return list(jobs.values())


@dataclass
class PipelineRun:
    flow: str
    run_id: str
    directory: Path
    started: float = field(default_factory=time.monotonic)
    workspaces: list[Path] = field(default_factory=list)
    # How each workspace goes once the run ended normally (its verdict known)
    # and its processes are killed: None removes it at once; a flow may hand it
    # to a thread of its own (flows/opening.py). Its claim is held until removed.
    remove_later: Callable[[Path], None] | None = None

    def log(self, job: str) -> Path:
        return self.directory / "logs" / f"{job}.log"

    @property
    def reports(self) -> Path:
        path = self.directory / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _journal(self, entry: dict[str, Any]) -> None:
        # Written before Prefect hears of the result: a verdict survives a
        # control plane that is gone (issue: a server that goes away mid-run).
        line = json.dumps(entry, default=str) + "\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        with _journal_lock, (self.directory / JOURNAL).open("a", encoding="utf-8") as handle:
            handle.write(line)

    def plan(self, job: str) -> None:
        self._journal({"name": job, "state": "planned"})

    def record(self, result: JobResult) -> None:
        self._journal(result.to_json())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(
        self,
        checkout: Checkout,
        ref: str,
        jobs: Iterable[JobResult],
        sections: Iterable[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> PipelineReport:
        return PipelineReport(
            flow=self.flow,
            repo=checkout.repo,
            ref=ref,
            commit=checkout.commit,
            jobs=tuple(jobs),
            duration=self.elapsed(),
            extra=extra or {},
            sections=tuple(sections),
        )


def _flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:
        run_id = None
    return str(run_id) if run_id else uuid.uuid4().hex


def _attempt() -> int:
    """Which attempt of its flow run this is (Prefect's ``run_count``, 1 outside a run)."""
    try:
        from prefect.runtime import flow_run

        count = int(flow_run.run_count)
    except Exception:
        count = 0
    return max(count, 1)


def run_directory_name(flow: str, run_id: str, attempt: int) -> str:
    """``<flow>-<run id>``, and ``...-attempt-<n>`` for a rescheduled run's later
    attempts: a crashed attempt's logs and journal stay as it left them, and the
    next one (deployments/crash_recovery.py) writes beside them, never into them."""
    name = f"{flow}-{run_id}"
    return name if attempt <= 1 else f"{name}-attempt-{attempt}"


def _write_attempt(directory: Path, run_id: str, attempt: int, **extra: object) -> None:
    # Who ran this attempt and when: the proof, after a crash, that two attempts
    # of one run never overlapped (tests/test_crash_recovery.py reads it).
    entry: dict[str, object] = {
        "run_id": run_id,
        "attempt": attempt,
        "pid": os.getpid(),
        "pid_ns": ownership.pid_namespace(),
        "hostname": socket.gethostname(),
        **extra,
    }
    target = directory / ATTEMPT
    partial = directory / f".{ATTEMPT}.partial"
    partial.write_text(json.dumps(entry), encoding="utf-8")
    partial.replace(target)


@contextmanager
def pipeline_run(flow: str) -> Iterator[PipelineRun]:
    """Set up a run; on any exit (also cancellation) kill what it started and
    delete its workspaces. Reports and logs stay in the run directory."""
    run_id = _flow_run_id()
    # A worker's flow runs start here, not through the CLI: what flows killed
    # with their worker left is reclaimed at the next run on this CICD_HOME.
    with contextlib.suppress(OSError):
        reclaim.reclaim()
    attempt = _attempt()
    directory = paths.runs() / run_directory_name(flow, run_id, attempt)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _write_attempt(directory, run_id, attempt, started=started)
    # Kept after the run (its logs and reports); a killed run's gets a note saying so.
    held = ownership.claim("run", notes=(directory,), detail={"flow": flow, "run_id": run_id})
    run = PipelineRun(flow, run_id, directory)
    _opened.append(directory)
    command.reopen()
    ended = False
    try:
        yield run
        ended = True
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # Cancellation (Prefect's TerminationSignal), SIGTERM, Ctrl-C: jobs
            # may still be running in worker threads; they must not start new
            # processes once their groups are killed.
            command.kill_all(close=True)
        raise
    finally:
        # Prefect's cancellation kills the flow's process group; the jobs'
        # commands run in groups of their own and must be killed here.
        command.kill_all()
        for workspace in run.workspaces:
            if ended and run.remove_later is not None:
                run.remove_later(workspace)
            else:
                remove_workspace(workspace)
        with contextlib.suppress(OSError):
            _write_attempt(directory, run_id, attempt, started=started, ended=time.time())
        held.release()
