"""The one place where a job becomes a Prefect task, and where every way a job
can end becomes one ``JobResult``.

Like nox's ``SessionRunner.execute``: ``execute`` runs a job and turns each
exception into a state in one place; ``job_result`` turns each Prefect state
into a result in one place. ``submit`` adds what Prefect gives every job:

- **retries** for infrastructure errors only (a failing test is never retried);
- **the cache**: the key is derived from the job's declared inputs
  (``Job.inputs``, ``Job.version``), and only a *passing* result is ever
  written: failed, timed-out, errored, cancelled and skipped results never
  are. A result read from the cache keeps its own verdict and says it was
  cached, with its original duration and run;
- **the timeout**: the job's deadline starts when its task starts, and every
  step runs within it. Prefect's ``timeout_seconds`` is not used: it neither
  interrupts a task in a thread pool nor kills its processes
  (https://github.com/PrefectHQ/prefect/issues/10926,
  https://github.com/PrefectHQ/prefect/issues/15760);
- **its artifact**: a markdown summary of the job on its task run.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

from prefect import task
from prefect.futures import PrefectFuture
from prefect.states import Failed

from cicd import command, masking
from cicd.errors import BadInput, CicdError, InfrastructureError, retry_on_infrastructure
from cicd.results import JobResult, JobState
from cicd.runs import PipelineRun
from tasks import deferred, progress
from tasks.core_shares import SHARES
from tasks.environments import ready
from tasks.job import Deadline, Job, JobContext, JobInputs, JobSkipped

# Part of every cache key. Bump it when the shape of JobResult changes: a result
# stored in an older shape would otherwise be served until the inputs change.
# 4: results carry the run that computed them (``origin``).
RESULT_VERSION: Final = "4"
CACHE_EXPIRATION: Final = timedelta(days=7)
INFRASTRUCTURE_RETRIES: Final = 2
RETRY_DELAYS: Final = [2, 10]

JobOutcome = JobResult | Any  # a JobResult, or a Failed state carrying one
JobFuture = PrefectFuture[JobOutcome]


def _plain(value: Any) -> Any:
    """The JSON form of a declared input (pydantic models, paths, mappings)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def cache_key(job: Job) -> str | None:
    """The cache key of ``job``: None (never cached) unless it declares a source."""
    inputs: JobInputs = job.inputs()
    if inputs.source is None:
        return None
    material = {
        "results": RESULT_VERSION,
        "kind": job.kind,
        "version": job.version,
        "name": job.name,
        "source": inputs.source,
        "config": _plain(inputs.config),
        "environment": inputs.environment,
        "services": _plain(inputs.services),
        "extra": _plain(inputs.extra),
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return f"cicd-job-{hashlib.sha256(blob).hexdigest()}"


def execute(job: Job, context: JobContext) -> JobResult:
    """Run ``job``; every exception becomes its state, but two.

    Infrastructure errors propagate so that Prefect retries them; once the
    retries are spent ``job_result`` reports them. Bad input (a release that
    would replace a published file, an unknown service) propagates too: it is
    no verdict on the commit, and ``job_result`` stops the pipeline with it
    (exit 2), as a bad cicd.yaml does.
    """
    started = time.monotonic()

    def ended(state: JobState, reason: str) -> JobResult:
        return JobResult(job.name, state, time.monotonic() - started, reason=reason)

    try:
        # A job planned on the cache's word that runs after all: its environment
        # is checked (or built) first; a commit that does not build fails here.
        with SHARES.job(job.name):
            result = ready(job).run(context)
    except (InfrastructureError, BadInput):
        raise
    except JobSkipped as exc:
        result = ended(JobState.SKIPPED, str(exc))
    except command.Cancelled as exc:
        result = ended(JobState.CANCELLED, f"cancelled: {exc}")
    except CicdError as exc:
        result = ended(JobState.FAILED, str(exc))
    except Exception as exc:
        # A bug of ours, not the target's verdict: say so, keep the traceback.
        log = context.log(job.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        result = ended(JobState.ERRORED, f"internal error: {type(exc).__name__}: {exc} (see {log})")
    # The reason goes into the task's state message (sent to the Prefect API
    # as is), its stored result and the progress lines: a secret in use that
    # it quotes (an exception's message, a command line) is masked here once.
    return replace(result, origin=context.run.run_id, reason=masking.mask(result.reason))


def keep_out_of_cache() -> None:
    """Tell the running task's transaction not to store its result.

    Prefect's task engine stages and commits the data of a *returned* state
    under the cache key whatever the state's type (``handle_success`` in
    ``prefect/task_engine.py``): without this a failing job's result is served
    as ``Cached`` on the next run of the same inputs and the rerun reports
    green. ``write_on_commit`` is the transaction's own switch for that write
    (https://docs.prefect.io/v3/develop/transactions).
    """
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False


@task
def job_task(job: Job, run: PipelineRun, workspace: Path) -> JobOutcome:
    """A job as a Prefect task: its own state, its artifact, its cache entry."""
    from tasks.reports import publish_job_artifact
    from tasks.step_logs import log_job_end

    with progress.job_running(job.name):
        result = execute(job, JobContext(run, workspace, Deadline(job.timeout)))
    run.record(result)
    progress.job_finished(result)
    log_job_end(result)
    # Sent from a thread of its own (in this task run's context), while the job
    # ends: the artifact needs the API, and neither the job's end nor its
    # verdict waits for it; a control plane that is gone only loses the
    # artifact (the journal and the report keep the result).
    publication = partial(publish_job_artifact, run.flow, result)
    deferred.defer(f"{job.name}: artifact publication", publication)
    if result.state is not JobState.PASSED:
        keep_out_of_cache()
    if result.state.ok:
        return result
    # A Failed state, not an exception: a failing test is the job's answer, not
    # an error of ours, and needs no traceback in the logs.
    return Failed(message=result.headline(), data=result)


def task_run_name(job: Job) -> str:
    """The job's name in the Prefect UI, as in reports: ``quality``, ``unit``,
    ``framework``, ``matrix-py3.12`` (its kind is the task's name)."""
    return job.name


def submit(job: Job, run: PipelineRun, workspace: Path) -> JobFuture:
    """Start ``job`` as a task of the current flow (in its task runner)."""
    key = cache_key(job)
    run.plan(job.name)
    options: dict[str, Any] = {
        "name": job.kind,
        "task_run_name": task_run_name(job),
        "retries": INFRASTRUCTURE_RETRIES,
        "retry_delay_seconds": RETRY_DELAYS,
        "retry_condition_fn": retry_on_infrastructure,
    }
    if key is not None:
        # No result_storage of its own: a job's result goes to the default result
        # storage, which every worker resolves the same way (a settings block, else
        # the server's default that `cicd up` sets, else PREFECT_LOCAL_STORAGE_PATH;
        # deployments/stack_results.py), so a pass cached on one worker is found
        # by all. A per-task storage here would bypass that one switch.
        options.update(
            cache_key_fn=lambda _context, _parameters: key,
            persist_result=True,
            cache_expiration=CACHE_EXPIRATION,
        )
    return job_task.with_options(**options).submit(job, run, workspace)


def passed_before(job: Job) -> bool:
    """True when a pass of ``job``'s very inputs is in the cache (only passes
    are ever written there), so running it again could only say the same."""
    # The store every job task writes to (the default result storage: jobs set
    # none of their own), not the flow run's, which may be configured apart.
    from prefect.results import ResultStore

    key = cache_key(job)
    return key is not None and ResultStore().exists(key)


def run_job(job: Job, run: PipelineRun, workspace: Path) -> JobResult:
    """Run one job to its end (a step that the next one needs, e.g. build)."""
    return job_result(job.name, submit(job, run, workspace))


def cached(result: JobResult) -> JobResult:
    """A result served from the cache keeps its own verdict and says it was cached.

    Only passing results are written (``keep_out_of_cache``), but a store
    written by an older version may hold a failure: it stays a failure.
    """
    if not result.state.ok:
        return replace(result, reason=f"{result.reason} (served from the Prefect cache)")
    return replace(result, state=JobState.CACHED, reason="served from the Prefect cache")


def job_result(name: str, future: JobFuture) -> JobResult:
    """The result of a submitted job, whatever state its task ended in.

    Its end is also a progress event: a job served from the cache or that
    crashed never ran ``job_task`` to its end (a watcher ignores a second end
    of a job it saw finish).
    """
    result = _job_result(name, future)
    progress.job_finished(result)
    return result


def _job_result(name: str, future: JobFuture) -> JobResult:
    future.wait()
    state = future.state
    if state.is_completed():
        result: JobResult = future.result()
        return cached(result) if state.name == "Cached" else result
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, JobResult):  # a Failed state carrying the job's result
        return outcome
    if isinstance(outcome, BadInput):
        raise outcome
    if state.is_cancelled() or state.is_crashed():
        return JobResult(name, JobState.CANCELLED, 0.0, reason=f"{state.name}: {state.message}")
    if isinstance(outcome, InfrastructureError):
        reason = f"infrastructure error after {INFRASTRUCTURE_RETRIES} retries: {outcome}"
    elif isinstance(outcome, BaseException):
        reason = f"{type(outcome).__name__}: {outcome}"
    else:
        reason = state.message or state.name or "unknown state"
    return JobResult(name, JobState.ERRORED, 0.0, reason=reason)


def collect(futures: Iterable[tuple[str, JobFuture]]) -> tuple[JobResult, ...]:
    return tuple(job_result(name, future) for name, future in futures)


def submit_all(
    jobs: Iterable[Job], run: PipelineRun, workspace: Path
) -> list[tuple[str, JobFuture]]:
    """Start every job at once (they run in parallel in the flow's task runner)."""
    return [(job.name, submit(job, run, workspace)) for job in jobs]
