"""What ``cicd run`` shows while a pipeline runs, on stderr.

The job layer emits events (``tasks/progress.py``); this module renders them:

- on a terminal, a live view (``rich.live``, which Prefect already depends
  on): one line per job, updated in place, with the step it is in, its
  elapsed time, and at its end its verdict and counts; service starts
  ("neo4j: starting… ready in 12.3 s") as lines above it;
- anywhere else (CI logs, a pipe), one timestamped line per event;
- with ``--quiet``, nothing.

Always stderr: with ``--json`` stdout carries exactly one object, and
without it stdout is the report alone, so ``cicd run ... > report.txt``
keeps the report clean.

How it sees the jobs: ``cicd run`` calls the flow in this process, and
Prefect's ``ThreadPoolTaskRunner`` runs each job in a worker thread of this
process, so the events reach these listeners directly; no polling of the
Prefect API is needed. Events come from several threads: each view takes a
lock.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from cicd import masking

if TYPE_CHECKING:
    from cicd.results import JobResult
    from tasks.progress import ProgressEvent

# A step's command is cut to this in the live view (the plain lines keep more).
LIVE_COMMAND_CHARS = 60
PLAIN_COMMAND_CHARS = 300


def shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def display_command(command: str) -> str:
    """The command as a person reads it: the program by its name, not by the
    path of the environment it was installed in (``python -m pytest ...``)."""
    program, _, rest = command.partition(" ")
    name = program.rsplit("/", 1)[-1] or program
    return f"{name} {rest}" if rest else name


def job_summary(result: JobResult) -> str:
    """``passed in 12.3 s: 41 passed, 1 failed, 0 errors, 2 skipped, coverage 87.5%``."""
    state = result.state.value.replace("_", " ")
    text = f"{state} in {result.duration:.1f} s"
    if result.state.value == "cached":
        # The flow run's id, cut like a commit's (the report has it whole).
        origin = f"run {result.origin[:8]}" if result.origin else "an earlier run"
        text = f"cached (ran {result.duration:.1f} s in {origin})"
    details: list[str] = []
    if result.tests is not None:
        counts = result.tests
        details.append(
            f"{counts.passed} passed, {counts.failed} failed, "
            f"{counts.errors} errors, {counts.skipped} skipped"
        )
    if result.coverage_percent is not None:
        details.append(f"coverage {result.coverage_percent:.1f}%")
    if details:
        text += ": " + ", ".join(details)
    if result.reason and not result.state.ok:
        text += f" ({shorten(result.reason, 200)})"
    return masking.mask(text)


class View(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class QuietView:
    """``--quiet``: nothing at all."""

    def __call__(self, event: ProgressEvent) -> None:
        del event

    def note(self, text: str) -> None:
        del text

    def close(self) -> None:
        pass


class PlainView:
    """One timestamped line per event, for logs that are read afterwards."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._finished: set[str] = set()

    def _line(self, text: str, at: float | None = None) -> None:
        stamp = datetime.datetime.fromtimestamp(at or time.time()).strftime("%H:%M:%S")
        with self._lock:
            self.stream.write(f"{stamp} {masking.mask(text)}\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        self._line(text)

    def __call__(self, event: ProgressEvent) -> None:
        from tasks import progress as p

        if isinstance(event, p.JobStarted):
            self._finished.discard(event.job)
            self._line(f"{event.job}: started", event.at)
        elif isinstance(event, p.StepStarted):
            self._line(
                f"{event.job}: {event.step}: "
                f"{shorten(display_command(event.command), PLAIN_COMMAND_CHARS)}",
                event.at,
            )
        elif isinstance(event, p.StepFinished):
            verdict = "timed out" if event.timed_out else f"exit {event.returncode}"
            self._line(f"{event.job}: {event.step}: {verdict} in {event.duration:.1f} s", event.at)
        elif isinstance(event, p.ServiceStarting):
            owner = f"{event.job}: " if event.job else ""
            self._line(f"{owner}{event.service}: starting ({event.backend})…", event.at)
        elif isinstance(event, p.ServiceReady):
            owner = f"{event.job}: " if event.job else ""
            self._line(f"{owner}{event.service}: ready in {event.seconds:.1f} s", event.at)
        elif isinstance(event, p.JobFinished):
            if event.job in self._finished:
                return  # its end seen already (job_task, then job_result)
            self._finished.add(event.job)
            self._line(f"{event.job}: {job_summary(event.result)}", event.at)

    def close(self) -> None:
        pass


@dataclass
class JobLine:
    """One job of the live view."""

    name: str
    started: float
    step: str = ""
    command: str = ""
    service: str = ""
    ended: str = ""
    ok: bool = True


class LiveView:
    """One line per job, updated in place (rich's Live redraws it 4 times a second)."""

    def __init__(self, stream: IO[str], width: int | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, stderr=True, highlight=False, width=width)
        self._lock = threading.Lock()
        self._jobs: dict[str, JobLine] = {}
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=4,
            transient=False,
            # What else writes to stderr while the view is up (warnings, a
            # print) goes above it instead of through it; stdout stays the
            # report's. Prefect's console handler keeps the stream it was
            # given at import, and may still cut across a frame.
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self._live.start()

    def __rich__(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        with self._lock:
            jobs = list(self._jobs.values())
        table = Table.grid(padding=(0, 1))
        # The mark, the job's name and its time are never cut; what it does is,
        # at the end: rich would otherwise shrink every column of a row that
        # is wider than the terminal, the mark first.
        name_width = max((len(job.name) for job in jobs), default=1)
        detail_width = max(10, self.console.width - (1 + name_width + 7 + 3))
        table.add_column(width=1, no_wrap=True)
        table.add_column(no_wrap=True, width=name_width)
        table.add_column(justify="right", no_wrap=True, width=7)
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=detail_width)
        for job in jobs:
            if job.ended:
                mark = Text("✓" if job.ok else "✗", style="green" if job.ok else "red")
                table.add_row(mark, Text(job.name, style="bold"), "", Text(job.ended))
                continue
            doing = job.service or (f"{job.step}: {job.command}" if job.step else "starting")
            table.add_row(
                Spinner("dots"),
                Text(job.name, style="bold"),
                f"{now - job.started:5.0f} s",
                Text(masking.mask(doing), style="dim"),
            )
        return table

    def note(self, text: str) -> None:
        self.console.print(masking.mask(text), markup=False, highlight=False)

    def __call__(self, event: ProgressEvent) -> None:
        from tasks import progress as p

        with self._lock:
            if isinstance(event, p.JobStarted):
                self._jobs[event.job] = JobLine(event.job, event.at)
                return
            line = self._jobs.get(event.job or "")
            if line is None and isinstance(event, p.JobFinished):
                # Served from the cache: its task never started here.
                line = self._jobs.setdefault(event.job, JobLine(event.job, event.at))
            if line is None:
                return
            if isinstance(event, p.StepStarted):
                line.step = event.step
                line.command = shorten(display_command(event.command), LIVE_COMMAND_CHARS)
            elif isinstance(event, p.ServiceStarting):
                line.service = f"{event.service}: starting ({event.backend})…"
            elif isinstance(event, p.ServiceReady):
                line.service = ""
            elif isinstance(event, p.JobFinished) and not line.ended:
                line.ended, line.ok = job_summary(event.result), event.result.state.ok
        if isinstance(event, p.ServiceReady):
            self.note(f"{event.job}: {event.service}: ready in {event.seconds:.1f} s")

    def close(self) -> None:
        self._live.stop()


def make_view(stream: IO[str], *, quiet: bool = False, live: bool | None = None) -> View:
    """The view for ``stream``: live on a terminal, plain lines elsewhere."""
    if quiet:
        return QuietView()
    if live is None:
        live = stream.isatty()
    return LiveView(stream) if live else PlainView(stream)


@contextlib.contextmanager
def watching(view: View) -> Iterator[View]:
    """The view receives every event emitted inside the block, and is closed after it."""
    from tasks import progress

    progress.add_listener(view)
    try:
        yield view
    finally:
        progress.remove_listener(view)
        view.close()
