"""A run's statuses on the git host: pending when it opens, final at its end.

One status for the run (``cicd/pr-validation``) and one per job
(``cicd/pr-validation/unit``), so a branch protection rule can require either
(https://docs.github.com/en/repositories/configuring-branches-and-merges-in-your-repository/managing-protected-branches/about-protected-branches#require-status-checks-before-merging).
Every job ends in success, failure or error: a job skipped by change detection
is a success whose description says why, since a required check left pending
blocks the merge for ever.

Posting never decides anything: a status that cannot be posted (an expired
token, a 5xx, no route to the host) is logged at ERROR with the host and the
HTTP status and the pipeline's verdict stays what its jobs made it. After a
401 or 403 the run stops trying: every later request would be refused too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, cast

from cicd import masking
from cicd.config import StatusesConfig
from cicd.errors import CicdError
from cicd.git import Checkout
from cicd.results import JobResult, JobState, PipelineReport
from tasks.git_hosts.all_git_hosts import git_host
from tasks.git_hosts.base import CommitStatus, GitHost, GitHostError, StatusState
from tasks.job_runner import JobFuture, job_result

# HTTP answers after which no further status of the run is tried.
REFUSED: Final = frozenset({401, 403})
# How long the run's final status waits for its jobs' posts still under way
# (each request has a 10 s timeout).
SETTLE_SECONDS: Final = 30.0

_fallback_logger = logging.getLogger("cicd.statuses")

Logger = logging.Logger | logging.LoggerAdapter[Any]


def run_logger() -> Logger:
    """The flow run's logger (its lines reach the Prefect UI), else ours."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return _fallback_logger


def job_state(result: JobResult) -> StatusState:
    if result.state.ok:
        return StatusState.SUCCESS
    if result.state in (JobState.FAILED, JobState.TIMED_OUT):
        return StatusState.FAILURE
    return StatusState.ERROR  # errored, cancelled: no verdict on the commit


def job_description(result: JobResult) -> str:
    if result.state is JobState.SKIPPED:
        return result.reason or "skipped"
    if result.state is JobState.CACHED:
        return "passed (served from the Prefect cache)"
    if result.state is JobState.PASSED:
        counts = f"{result.tests.passed} tests passed, " if result.tests is not None else ""
        return f"{counts}passed in {result.duration:.1f} s"
    return f"{result.state.value}: {result.reason}" if result.reason else result.state.value


def run_status(report: PipelineReport) -> tuple[StatusState, str]:
    if report.passed:
        return StatusState.SUCCESS, f"{len(report.jobs)} jobs passed in {report.duration:.0f} s"
    states = [job_state(job) for job in report.jobs]
    failing = [job.name for job in report.jobs if not job.state.ok]
    state = StatusState.FAILURE if StatusState.FAILURE in states else StatusState.ERROR
    return state, f"{', '.join(failing)} {'failed' if state is StatusState.FAILURE else 'errored'}"


@dataclass
class CommitStatuses:
    """The statuses of one run on one commit; with no host, nothing is posted."""

    host: GitHost | None
    commit: str = ""
    flow: str = ""
    prefix: str = "cicd"
    target_url: str | None = None
    logger: Callable[[], Logger] = run_logger
    # Contexts posted pending and not yet final.
    open_contexts: list[str] = field(default_factory=list)
    # What was posted last per context: a job's end is posted once, as it ends.
    posted: dict[str, tuple[StatusState, str]] = field(default_factory=dict)
    refused: bool = False
    # Jobs end in the task runner's threads.
    lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    in_flight: int = 0

    def context(self, job: str | None = None) -> str:
        base = f"{self.prefix}/{self.flow}"
        return base if job is None else f"{base}/{job}"

    def post(self, context: str, state: StatusState, description: str) -> None:
        description = masking.mask(description)
        wanted = (state, description)
        with self.lock:
            # Claimed before the request: a job's end may be posted from its
            # task's thread and from final() at once, and goes out once.
            before = self.posted.get(context)
            if self.host is None or self.refused or before == wanted:
                return
            self.posted[context] = wanted
            self.in_flight += 1
        error = self._send(self.host, CommitStatus(context, state, description, self.target_url))
        with self.lock:
            self.in_flight -= 1
            self.lock.notify_all()
            first_refusal = False
            if error is None and state.final and context in self.open_contexts:
                self.open_contexts.remove(context)
            elif error is None and not state.final and context not in self.open_contexts:
                self.open_contexts.append(context)
            elif error is not None:
                # Not posted after all: a later call may try again.
                if self.posted.get(context) == wanted:
                    if before is None:
                        del self.posted[context]
                    else:
                        self.posted[context] = before
                first_refusal = error.status_code in REFUSED and not self.refused
                self.refused = self.refused or error.status_code in REFUSED
        if error is not None:
            self.logger().error("commit status not posted: %s", error)
        if error is not None and first_refusal:
            self.logger().error(
                "commit statuses of this run are not posted: %s refused the token "
                "(HTTP %s); renew it, or let it write commit statuses, in the Prefect "
                "Secret block named by statuses.token_block",
                error.host,
                error.status_code,
            )

    def _send(self, host: GitHost, status: CommitStatus) -> GitHostError | None:
        try:
            host.post(self.commit, status)
        except GitHostError as exc:
            return exc
        except Exception as bug:
            # Not the host's answer (a bug of ours, a body the client refused):
            # still no reason to change the verdict.
            return GitHostError(
                f"{host.name} at {host.host}: {status.context} ({status.state.value}) not "
                f"sent: {type(bug).__name__}: {bug}",
                host.host,
            )
        return None

    def settled(self) -> None:
        """Wait (bounded) for the posts under way, e.g. of jobs that just ended."""
        with self.lock:
            self.lock.wait_for(lambda: self.in_flight == 0, timeout=SETTLE_SECONDS)

    def pending(self, jobs: Iterable[str] = ()) -> None:
        """The run (once) and each of ``jobs`` pending: they started."""
        if self.context() not in self.open_contexts:
            self.post(self.context(), StatusState.PENDING, f"{self.flow} running")
        for job in jobs:
            self.post(self.context(job), StatusState.PENDING, f"{job} running")

    def job_ended(self, result: JobResult) -> None:
        self.post(self.context(result.name), job_state(result), job_description(result))

    def follow(self, futures: Iterable[tuple[str, JobFuture]]) -> list[tuple[str, JobFuture]]:
        """``futures`` (``job_runner.submit_all``), each job's status posted as
        soon as its task ends; the run's waits for :meth:`final`."""
        followed = list(futures)
        if self.host is not None:
            for name, future in followed:
                future.add_done_callback(partial(self._ended, name))
        return followed

    def _ended(self, name: str, future: JobFuture) -> None:
        try:
            result = job_result(name, future)
        except Exception:  # e.g. BadInput: the flow raises it, and abandon() reports it
            return
        self.job_ended(result)

    def final(self, report: PipelineReport) -> None:
        """Each job's end, then the run's; a job left pending without a result errs."""
        for result in report.jobs:
            self.job_ended(result)  # posted already when it was followed to its end
        self.settled()  # the run's status comes last
        ended = {self.context(result.name) for result in report.jobs}
        for context in [c for c in self.open_contexts if c != self.context()]:
            if context not in ended:
                self.post(context, StatusState.ERROR, "no result: the run ended before this job")
        state, description = run_status(report)
        self.post(self.context(), state, description)

    def abandon(self, why: str) -> None:
        """The run stopped early (an error, a cancel): nothing is left pending."""
        for context in list(self.open_contexts):
            self.post(context, StatusState.ERROR, why)


def load_token(block_name: str) -> str:
    """The token in the Prefect Secret block ``block_name``, masked from now on."""
    from prefect.blocks.system import Secret

    try:
        # _sync: the sync path even when called from an async flow.
        block = cast("Secret[Any]", Secret.load(block_name, _sync=True))  # type: ignore[call-arg]
    except ValueError as exc:
        raise CicdError(
            f"statuses.token_block: Prefect Secret block {block_name!r} not found ({exc})"
        ) from None
    value = block.get()
    if not isinstance(value, str) or len(value.strip()) < masking.MIN_SECRET_LENGTH:
        raise CicdError(f"statuses.token_block: Prefect Secret block {block_name!r} holds no token")
    token = value.strip()
    masking.register([token])
    return token


def flow_run_url() -> str | None:
    """The flow run's page in the Prefect UI."""
    try:
        from prefect.runtime import flow_run

        url = flow_run.ui_url
    except Exception:
        return None
    return str(url) if url else None


def open_statuses(
    flow: str, checkout: Checkout, config: StatusesConfig | None, *, untrusted: bool = False
) -> CommitStatuses:
    """The statuses of a run of ``flow`` on ``checkout``; posting nothing when
    unconfigured, for a fork, or when the host cannot be set up (logged)."""
    if config is None:
        return CommitStatuses(None)
    if untrusted:
        # A fork's cicd.yaml would choose the API URL the token is sent to.
        run_logger().warning(
            "commit statuses not posted: the change comes from a fork, whose cicd.yaml "
            "must not choose where the statuses token goes"
        )
        return CommitStatuses(None)
    try:
        host = git_host(config, checkout.repo, load_token(config.token_block))
    except CicdError as exc:
        run_logger().error("commit statuses not posted: %s", exc)
        return CommitStatuses(None)
    except Exception as exc:  # the Prefect API did not answer for the block, ...
        run_logger().error(
            "commit statuses not posted: %s: %s", type(exc).__name__, masking.mask(str(exc))
        )
        return CommitStatuses(None)
    return CommitStatuses(host, checkout.commit, flow, config.context_prefix, flow_run_url())


@contextmanager
def commit_statuses(
    flow: str, checkout: Checkout, config: StatusesConfig | None, *, untrusted: bool = False
) -> Iterator[CommitStatuses]:
    """The run pending from the start; whatever is still pending when the run
    stops early is set to error, so no required check waits for ever."""
    statuses = open_statuses(flow, checkout, config, untrusted=untrusted)
    statuses.pending()
    try:
        yield statuses
    except BaseException as exc:
        if not _requeued(exc):
            statuses.abandon(f"the run stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        if statuses.host is not None:
            statuses.host.close()


def _requeued(exc: BaseException) -> bool:
    """Prefect's ``Abort``: the orchestrator owns the run's state, which is not
    final (``flows/slot_wait.py`` requeues a run that way): its statuses stay
    pending for the attempt that runs it."""
    from prefect.exceptions import Abort

    return isinstance(exc, Abort)
