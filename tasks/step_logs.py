"""What a person reads in the Prefect UI while a job runs: each step's command
and, live, its output line by line, bounded per step; at a job's end its verdict
in one line and, when it failed, the tail of its failing step.

Bounded like GitHub's job log view shows a step: the first :data:`HEAD_LINES`
lines as they come, then a notice naming the file that holds the whole output
(``cicd.command`` writes it, masked and bounded, into the run's directory),
and at the step's end its last :data:`TAIL_LINES` lines. A step printing
200 MB thus sends a few hundred records to the server, not 200 MB.

The records go to Prefect's API handler through a logger of our own, at INFO
whatever ``PREFECT_LOGGING_LEVEL`` says (the CLI sets WARNING to keep the
terminal quiet), and not to the console: the terminal view is
``cicd run``'s. Every line is masked by ``cicd.command`` before it gets here,
and the handler carries ``cicd.masking``'s filter as well.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Final

from cicd import masking
from cicd.command import CommandResult
from cicd.results import JobResult, StepResult

HEAD_LINES: Final = 200
TAIL_LINES: Final = 50
# A longer line is shown cut (the log file has it whole).
LINE_CHARS: Final = 2_000
# The failing step's output shown with a failed job's verdict.
FAILURE_TAIL_LINES: Final = 30
STEPS_LOGGER: Final = "cicd.steps"
# Prefect's run loggers, whose handlers (the API handler) we borrow.
_RUN_LOGGERS: Final = ("prefect.task_runs", "prefect.flow_runs")

StepLogger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class _RunAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefect's ``PrefectLogAdapter`` contract: the run's ids on every record
    (the API handler reads ``flow_run_id``/``task_run_id`` from it), also when
    a line is logged from the thread that follows a command's output."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def run_logger() -> StepLogger:
    """The steps' logger of the current Prefect run; a plain one outside a run."""
    plain = logging.getLogger(STEPS_LOGGER)
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return plain
    try:
        prefect_logger = get_run_logger()
    except MissingContextError:
        return plain
    logger = logging.getLogger(f"{STEPS_LOGGER}.prefect")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handlers = [h for name in _RUN_LOGGERS for h in logging.getLogger(name).handlers]
    logger.handlers = list(dict.fromkeys(handlers))
    masking.install_filter((logger.name,))
    extra = dict(getattr(prefect_logger, "extra", None) or {})
    return _RunAdapter(logger, extra)


def _shown(line: str) -> str:
    return line if len(line) <= LINE_CHARS else f"{line[:LINE_CHARS]} [... {len(line)} chars]"


class StepLog:
    """The live log of one step: pass :meth:`line` as ``command.run``'s ``on_line``."""

    def __init__(
        self, job: str, step: str, command: str, log_path: Path | None, logger: StepLogger
    ) -> None:
        self.prefix = f"[{job}:{step}]"
        self.log_path = log_path
        self.logger = logger
        self.count = 0
        self.logged = 0
        # Only the thread that follows the output calls line(), and ended() is
        # called once that thread is done: no lock needed.
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        where = f" (full output: {log_path})" if log_path is not None else ""
        logger.info("%s: $ %s%s", self.prefix, masking.mask(command), where)

    def line(self, text: str) -> None:
        self.count += 1
        if self.count > HEAD_LINES + 1:
            self._tail.append(_shown(text))
            return
        self.logged += 1
        if self.count <= HEAD_LINES:
            self.logger.info("%s | %s", self.prefix, _shown(text))
            return
        self._tail.append(_shown(text))
        self.logger.info(
            "%s: more than %d lines; the last %d are shown when the step ends%s",
            self.prefix,
            HEAD_LINES,
            TAIL_LINES,
            f", all of them are in {self.log_path}" if self.log_path else "",
        )

    def ended(self, result: CommandResult) -> None:
        hidden = self.count - HEAD_LINES - len(self._tail)
        if hidden > 0:
            self.logger.info("%s: ... %d lines not shown ...", self.prefix, hidden)
        for text in self._tail:
            self.logged += 1
            self.logger.info("%s | %s", self.prefix, text)
        self._tail.clear()
        verdict = "timed out" if result.timed_out else f"exit {result.returncode}"
        self.logger.info(
            "%s: %s in %.1fs, %d lines of output",
            self.prefix,
            verdict,
            result.duration,
            result.lines,
        )


def failing_step(result: JobResult) -> StepResult | None:
    return next((step for step in result.steps if not step.ok), None)


def log_job_end(result: JobResult, logger: StepLogger | None = None) -> None:
    """A job's verdict in one line; a failed job's is an error with the tail of
    its failing step (never the result's repr)."""
    logger = logger if logger is not None else run_logger()
    headline = result.headline()
    if result.state.ok:
        logger.info("%s", headline)
        return
    step = failing_step(result)
    if step is None or not step.output_tail.strip():
        logger.error("%s", headline)
        return
    tail = "\n".join(step.output_tail.rstrip().splitlines()[-FAILURE_TAIL_LINES:])
    logger.error(
        "%s\nlast lines of %s (`%s`):\n%s", headline, step.name, masking.mask(step.command), tail
    )
