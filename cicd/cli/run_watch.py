"""A run whose control plane goes away: the jobs keep their verdicts.

The flow runs in the main thread while a thread watches the Prefect API
(``/health``, every :data:`TICK` seconds). While the server answers, nothing
changes. When it stops answering:

- it comes back within ``CICD_SERVER_WAIT_SECONDS`` (default
  :data:`DEFAULT_WAIT`): the flow carries on and reports through Prefect as
  usual; a job that Prefect reports errored while the run's journal (written
  by the job itself before Prefect hears of it, ``cicd/runs.py``) holds its
  verdict gets that verdict: never a failed run whose jobs all passed;
- it does not: the run ends with ``cicd: control plane unreachable: <address>``,
  the local report built from the journal (printed, ``--json``, and written to
  ``report.json`` in the run directory) and an exit code from the jobs'
  verdicts: 0 all passed, 1 one failed, 3 when a job has no verdict (it never
  ran, or was still running and was stopped).

The flow is then stuck in Prefect's client retries, and the task runner's
threads are not daemons: the watching thread ends the process with
``os._exit`` once the report is out and every job's process group is killed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicd import command, runs
from cicd.env_numbers import positive_number
from deployments.stack_processes import api_healthy

WAIT_VARIABLE = "CICD_SERVER_WAIT_SECONDS"
DEFAULT_WAIT = 120.0
TICK = 2.0
UNKNOWN = "unknown"
OK_STATES = {"passed", "cached", "skipped"}
EXIT_NO_VERDICT = 3
# Called with the exit code before :func:`end_now` leaves: the warm runner's
# child sends it to its CLI there (cicd/cli/warm_runner.py).
before_exit: list[Callable[[int], None]] = []


def wait_seconds(environ: dict[str, str] | None = None) -> float:
    return positive_number(WAIT_VARIABLE, DEFAULT_WAIT, environ=environ)


@dataclass
class Watched:
    """How the flow ended: its value or exception; ``interrupted`` when the
    server stopped answering at least once during the run."""

    value: Any = None
    error: Exception | None = None
    interrupted: bool = False
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def watch(
    call: Callable[[], Any],
    api_url: str,
    wait: float,
    give_up: Callable[[], object],
    tick: float = TICK,
) -> Watched:
    """Run ``call`` here (the flow keeps the main thread: signals, Prefect's
    timeouts) while a thread watches ``api_url``; once it has not answered for
    ``wait`` s, that thread calls ``give_up`` (which ends the process) unless
    the flow finished first. A signal's ``SystemExit`` and Ctrl-C pass through."""
    outcome = Watched()
    done = threading.Event()

    def monitor() -> None:
        down_since: float | None = None
        while not done.wait(tick):
            if api_healthy(api_url, timeout=tick):
                down_since = None
                continue
            outcome.interrupted = True
            now = time.monotonic()
            down_since = now if down_since is None else down_since
            if now - down_since >= wait:
                with outcome.lock:
                    if not outcome.finished:
                        give_up()
                return

    threading.Thread(target=monitor, name="cicd-control-plane", daemon=True).start()
    try:
        outcome.value = call()
    except Exception as exc:
        outcome.error = exc
    finally:
        done.set()
    with outcome.lock:  # blocks for good once give_up has begun: it ends the process
        outcome.finished = True
    return outcome


def _job_ok(job: dict[str, Any]) -> bool:
    return job.get("state") in OK_STATES


def local_report(flow: str, repo: str | None, ref: str | None, api_url: str) -> dict[str, Any]:
    """The run's report from its journal alone: every job with its verdict or ``unknown``."""
    directories = [d for d in runs.opened_directories() if d.name.startswith(f"{flow}-")]
    jobs: list[dict[str, Any]] = []
    directory: Path | None = directories[-1] if directories else None
    if directory is not None:
        for job in runs.read_journal(directory):
            if job.get("state") == "planned":
                job = {
                    "name": job["name"],
                    "state": UNKNOWN,
                    "duration": 0.0,
                    "reason": "no verdict: the control plane became unreachable",
                }
            jobs.append(job)
    known = bool(jobs) and all(job["state"] != UNKNOWN for job in jobs)
    state = ("passed" if all(_job_ok(j) for j in jobs) else "failed") if known else UNKNOWN
    report: dict[str, Any] = {
        "flow": flow,
        "state": state,
        "repo": repo,
        "ref": ref,
        "commit": "",
        "jobs": jobs,
        "control_plane": {"reachable": False, "address": api_url},
    }
    if directory is not None:
        report["run_directory"] = str(directory)
        (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def exit_code(report: dict[str, Any]) -> int:
    """0 every job passed, 1 one failed, 3 a job without a verdict."""
    if report["state"] == UNKNOWN:
        return EXIT_NO_VERDICT
    return 0 if report["state"] == "passed" else 1


def reconcile(report: dict[str, Any]) -> dict[str, Any]:
    """A report from Prefect, with the journal's verdict for every job Prefect
    lost (errored or cancelled by the outage); its state follows the jobs."""
    directories = [d for d in runs.opened_directories() if d.name.startswith(f"{report['flow']}-")]
    if not directories or "jobs" not in report:
        return report
    journal = {job["name"]: job for job in runs.read_journal(directories[-1])}
    jobs = []
    for job in report["jobs"]:
        known = journal.get(job["name"])
        lost = job.get("state") in ("errored", "cancelled")
        jobs.append(known if lost and known and known.get("state") != "planned" else job)
    state = "passed" if all(_job_ok(j) for j in jobs) else "failed"
    return {**report, "jobs": jobs, "state": state}


def unreachable_line(api_url: str) -> str:
    return f"cicd: control plane unreachable: {api_url}"


def end_now(code: int) -> None:
    """Kill every job's group, flush, and leave without joining the stuck threads."""
    command.kill_all(close=True)
    sys.stdout.flush()
    sys.stderr.flush()
    for hook in before_exit:
        hook(code)
    os._exit(code)
