"""Waiting for a service slot without pinning a worker slot (issue 16, item 6).

A worker started with ``--limit N`` (``deployments/stack_workers.py``) runs at
most N flow runs; a run that sits in ``concurrency("cicd-neo4j-servers")``
for minutes holds one of those N the whole time, while runs that need no
Neo4j queue behind it. Prefect has this problem solved for *deployment*
concurrency limits: its server rule ``SecureFlowConcurrencySlots`` refuses
the Scheduled -> Pending transition of a run over the limit and puts it back
as ``Scheduled(name="AwaitingConcurrencySlot")`` 30 s later
(``PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS``;
``prefect/server/orchestration/core_policy.py``, the design of
https://github.com/PrefectHQ/prefect/issues/14934), so no worker ever starts it.
A deployment limit counts every run of one deployment, though, not the Neo4j
servers of every pipeline; and a global concurrency limit
taken with ``concurrency()`` waits in the flow's process, and so in the
worker's slot (``timeout_seconds=None`` waits for ever;
https://docs.prefect.io/v3/how-to-guides/workflows/global-concurrency-limits).

So a run started by a worker does what the server rule does, from inside:
before its jobs start it takes every server slot its jobs will need at once
(``tasks.services.reserved_neo4j_slots``); when they do not come free within
``CICD_SERVICE_SLOT_WAIT_SECONDS`` (default 30) it sets its own state to
``AwaitingConcurrencySlot`` with a scheduled time
``CICD_SERVICE_SLOT_RETRY_SECONDS`` (default 30) ahead and raises Prefect's
``Abort``. The engine treats ``Abort`` as "the orchestrator owns the state"
(``prefect.engine.handle_engine_signals`` exits 0, the worker proposes no
Crashed state) and the worker's limiter slot is given back when the process
exits; any worker may take the run again once it is due. Jobs that already
passed are then served from the cache. ``cicd run`` (no worker, nobody to
make room for) waits as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Final, NoReturn
from uuid import UUID

from cicd.env_numbers import positive_number
from tasks.job import Job
from tasks.job_runner import passed_before
from tasks.testing import SuiteJob

WAIT_ENV: Final = "CICD_SERVICE_SLOT_WAIT_SECONDS"
RETRY_ENV: Final = "CICD_SERVICE_SLOT_RETRY_SECONDS"
# Prefect's own default for runs over a deployment concurrency limit.
DEFAULT_WAIT_SECONDS: Final = 30.0
DEFAULT_RETRY_SECONDS: Final = 30.0
MAX_SECONDS: Final = 3600.0
STATE_NAME: Final = "AwaitingConcurrencySlot"


def seconds_setting(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds from ``name``, at most an hour, else ``default``."""
    return positive_number(name, default, maximum=MAX_SECONDS, environ=environ)


def slots_needed(jobs: Iterable[Job]) -> int:
    """Server slots the jobs will take: one per test job with services, unless a
    pass of its very inputs is cached (it will start nothing)."""
    return sum(
        1
        for job in jobs
        if isinstance(job, SuiteJob) and job.suite.services and not passed_before(job)
    )


def requeue_state_time(now: datetime, retry_seconds: float) -> datetime:
    return now + timedelta(seconds=retry_seconds)


def _worker_run_id() -> UUID | None:
    """The current flow run's id when a worker started it (it has a deployment)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or run.deployment_id is None:
        return None
    return run.id


def requeue(flow_run_id: UUID, retry_seconds: float, reason: str) -> NoReturn:
    """Put the run back in the queue ``retry_seconds`` from now and leave its process."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Abort
    from prefect.logging import get_run_logger
    from prefect.states import AwaitingConcurrencySlot

    when = requeue_state_time(datetime.now(UTC), retry_seconds)
    message = f"{reason}; back in the queue at {when:%H:%M:%S} UTC"
    with get_client(sync_client=True) as client:
        # force: Running -> Scheduled is not a transition the orchestration
        # rules propose themselves; the run is ours while it runs.
        client.set_flow_run_state(
            flow_run_id, AwaitingConcurrencySlot(scheduled_time=when, message=message), force=True
        )
    get_run_logger().info("service slots busy: %s", message)
    raise Abort(message)


@contextmanager
def service_slots_or_requeue(jobs: Iterable[Job]) -> Iterator[int]:
    """Hold the server slots ``jobs`` need while the block runs; a worker's run
    that cannot get them soon is requeued instead of waiting (module docstring).
    Yields how many slots were reserved."""
    from tasks.services import ServerSlotsBusy, reserved_neo4j_slots

    flow_run_id = _worker_run_id()
    count = slots_needed(jobs) if flow_run_id is not None else 0
    if count == 0:
        yield 0
        return
    wait = seconds_setting(WAIT_ENV, DEFAULT_WAIT_SECONDS)
    retry = seconds_setting(RETRY_ENV, DEFAULT_RETRY_SECONDS)
    with ExitStack() as stack:
        try:
            reserved = stack.enter_context(reserved_neo4j_slots(count, wait))
        except ServerSlotsBusy as busy:
            assert flow_run_id is not None
            requeue(flow_run_id, retry, str(busy))
        yield reserved
