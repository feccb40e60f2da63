"""Cancel-in-progress: a newer run of a group cancels the older runs of that group.

GitHub Actions' ``concurrency: {group: ..., cancel-in-progress: true}`` keeps
only the newest PR run per branch. Prefect's deployment ``concurrency_limit``
cannot express that: its ``CANCEL_NEW`` strategy cancels the *new* run and
``ENQUEUE`` makes it wait behind the stale one. So the flow does it itself at
start: :func:`cancel_older_runs` finds the other runs of the same flow whose
``group`` parameter is equal and that were created earlier and are still
scheduled, pending or running, and cancels them.

Only *older* runs are touched, so two runs of a group that start at the same
moment cannot cancel each other: the newer one always survives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

# Prefect's API returns at most this many runs per page (PREFECT_API_DEFAULT_LIMIT).
PAGE_SIZE: Final = 200
GROUP_PARAMETER: Final = "group"


@dataclass(frozen=True)
class RunInfo:
    """What the selection needs to know about a flow run."""

    id: str
    created: datetime | None
    parameters: dict[str, Any]
    state_type: str


def older_runs_in_group(
    current_id: str, current_created: datetime, group: str, runs: Iterable[RunInfo]
) -> list[RunInfo]:
    """The runs to cancel: same ``group`` parameter, created before the current
    run, not the current run, oldest first."""
    chosen = [
        run
        for run in runs
        if run.id != current_id
        and run.parameters.get(GROUP_PARAMETER) == group
        and run.created is not None
        and run.created < current_created
    ]
    return sorted(chosen, key=lambda run: (run.created or current_created, run.id))


def cancel_older_runs(flow_name: str, group: str | None) -> list[str]:
    """From inside a flow run, cancel the older active runs of ``flow_name`` in ``group``.

    Returns the ids of the runs cancelled. A no-op (empty list) outside a flow
    run or without a group. A run still waiting for a worker (Scheduled) goes
    straight to Cancelled: no process exists that could acknowledge it. A
    Pending or Running one goes to Cancelling, which makes its worker kill the
    run's process group (flows clean up in their ``finally`` blocks).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import State, StateType
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger
    from prefect.states import Cancelled, Cancelling

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not group:
        return []
    current = context.flow_run
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        # The context's copy may predate the server's timestamps; ask the server.
        me = client.read_flow_run(current.id)
        if me.created is None:
            return []
        active = FlowRunFilter(
            id=FlowRunFilterId(not_any_=[me.id]),
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                )
            ),
        )
        candidates: list[RunInfo] = []
        offset = 0
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=active,
                limit=PAGE_SIZE,
                offset=offset,
            )
            candidates.extend(
                RunInfo(
                    id=str(run.id),
                    created=run.created,
                    parameters=dict(run.parameters or {}),
                    state_type=run.state_type.value if run.state_type else "",
                )
                for run in page
            )
            if len(page) < PAGE_SIZE:
                break
            offset += PAGE_SIZE

        cancelled: list[str] = []
        message = f"Cancelled by a newer run of group {group!r}: {me.name} ({me.id})"
        for run in older_runs_in_group(str(me.id), me.created, group, candidates):
            state: State[Any] = (
                Cancelled(message=message)
                if run.state_type == StateType.SCHEDULED.value
                else Cancelling(message=message)
            )
            # force: the orchestration rules would otherwise refuse some
            # transitions (e.g. Pending -> Cancelling while a worker submits it).
            client.set_flow_run_state(run.id, state, force=True)
            logger.info("cancel-in-progress: cancelled older run %s of group %r", run.id, group)
            cancelled.append(run.id)
    return cancelled
