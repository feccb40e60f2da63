"""Crash recovery of deployment runs: a run whose worker's host died is marked
Crashed by the server and rescheduled, so another worker completes it.

A worker host that dies (power, kernel panic, a container's PID namespace
killed) takes the worker and its flow processes at once: nobody is left to
report the run's end, and it would stay Running forever. Prefect's answer is
flow-run heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, at least 30 s,
sent by the flow process itself) and an automation that marks a run Crashed
when they stop: "How to detect and respond to zombie flows",
https://docs.prefect.io/v3/advanced/detect-zombie-flows. The Prefect server
has no built-in detector (Cloud's "unresponsive run detection" is that
automation, managed).

Flow ``retries`` never apply to a Crashed run (the engine that would retry is
the one that died), so a second automation reschedules it: on
``prefect.flow-run.Crashed`` it proposes ``Scheduled``/``AwaitingRetry`` for
the same run, as the UI's "Retry" does (Prefect's orchestration lets a
terminal run of a deployment go back to Scheduled,
``HandleFlowTerminalStateTransitions``). The same run, not a new one: its
parameters, tags and group (cancel-in-progress) stay, its state history shows
Running -> Crashed -> AwaitingRetry -> Running -> verdict, and the next attempt
runs with ``run_count`` + 1 in a directory of its own (``cicd.runs``).
A run-deployment action would need every parameter re-templated and would
leave two runs for one trigger.

Bounds and scope: only runs of the flows in ``CICD_CRASH_RESCHEDULE_FLOWS``
(idempotent pipelines; never release or deploy, where a half-done attempt must
be looked at by a person) and only while ``run_count`` <= ``CICD_CRASH_RESCHEDULES``
(a run that crashes its host every time is not rescheduled forever).

Nothing runs twice at once: the heartbeat thread runs in the flow process, so
heartbeats absent for ``CICD_HEARTBEAT_ABSENT_SECONDS`` (default three periods)
mean that process is gone or cut off; only then is the run rescheduled. What
the dead attempt started is reaped by ownership at the next run's start
(``cicd.runs.pipeline_run`` -> ``cicd.reclaim``), never by PID alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cicd.env_numbers import whole_number
from cicd.errors import BadInput
from deployments.stack_auth import auth_string_for

if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore

HEARTBEAT_ENV = "CICD_HEARTBEAT_SECONDS"
ABSENT_ENV = "CICD_HEARTBEAT_ABSENT_SECONDS"
RESCHEDULES_ENV = "CICD_CRASH_RESCHEDULES"
FLOWS_ENV = "CICD_CRASH_RESCHEDULE_FLOWS"

# Prefect's floor: flow_engine.MINIMUM_HEARTBEAT_INTERVAL and the `ge=30` of
# FlowsSettings.heartbeat_frequency (a smaller value fails settings validation).
MIN_HEARTBEAT_SECONDS = 30
DEFAULT_HEARTBEAT_SECONDS = 30
# Three periods: one late heartbeat (a loaded host, a slow API call) is not a death.
DEFAULT_ABSENT_PERIODS = 3
# Slack over one period a shorter window must keep (the heartbeat loop sleeps
# in whole seconds after an API call that may itself take seconds).
MIN_SLACK_SECONDS = 10
DEFAULT_RESCHEDULES = 1
DEFAULT_FLOWS = ("pr-validation", "integration", "nightly")

DETECT_AUTOMATION = "cicd: crash runs whose heartbeats stopped"
RESCHEDULE_AUTOMATION = "cicd: reschedule crashed runs"
AUTOMATIONS = (DETECT_AUTOMATION, RESCHEDULE_AUTOMATION)


@dataclass(frozen=True)
class RecoverySettings:
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    absent_seconds: int = DEFAULT_HEARTBEAT_SECONDS * DEFAULT_ABSENT_PERIODS
    reschedules: int = DEFAULT_RESCHEDULES
    flows: tuple[str, ...] = DEFAULT_FLOWS


def _whole_number(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    return whole_number(name, default, minimum=minimum, environ=env)


def settings_from_env(env: Mapping[str, str] | None = None) -> RecoverySettings:
    """The recovery timings and scope from ``CICD_*`` variables, checked."""
    source = os.environ if env is None else env
    heartbeat = _whole_number(
        source, HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS, MIN_HEARTBEAT_SECONDS
    )
    minimum_absent = heartbeat + MIN_SLACK_SECONDS
    absent = _whole_number(source, ABSENT_ENV, heartbeat * DEFAULT_ABSENT_PERIODS, minimum_absent)
    reschedules = _whole_number(source, RESCHEDULES_ENV, DEFAULT_RESCHEDULES, 0)
    raw_flows = source.get(FLOWS_ENV)
    flows: tuple[str, ...] = DEFAULT_FLOWS
    if raw_flows is not None:
        flows = tuple(name.strip() for name in raw_flows.split(",") if name.strip())
        if any(not name.replace("-", "").replace("_", "").isalnum() for name in flows):
            raise BadInput(f"{FLOWS_ENV}={raw_flows!r}: expected comma-separated flow names")
    return RecoverySettings(heartbeat, absent, reschedules, flows)


def worker_env(settings: RecoverySettings) -> dict[str, str]:
    """What a worker passes its flow runs so that they send heartbeats."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.heartbeat_seconds)}


def deploy_env(settings: RecoverySettings) -> dict[str, str]:
    """What ``prefect deploy`` resolves prefect.yaml's heartbeat placeholder from:
    every deployment's runs get the period in their job variables, so a worker
    started by hand (Prefect's default heartbeat is 180 s, longer than the
    window) never has a live run crashed."""
    return {HEARTBEAT_ENV: str(settings.heartbeat_seconds)}


def automations(settings: RecoverySettings) -> list[AutomationCore]:
    """The detector and, unless rescheduling is off, the rescheduler."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    runs = "prefect.flow-run.*"
    # Heartbeats name their flow as a related resource (flow_engine's
    # _build_heartbeat_event_template), state events too (server/models/events.py).
    of_our_flows = ResourceSpecification(
        {"prefect.resource.role": "flow", "prefect.resource.name": list(settings.flows)}
    )
    detect = AutomationCore(
        name=DETECT_AUTOMATION,
        description=(
            f"A run of {', '.join(settings.flows)} that sent a heartbeat and then none, "
            f"nor an end, for {settings.absent_seconds}s lost its process: mark it Crashed."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                # A paused or suspended run may stop its process on purpose.
                "prefect.flow-run.Paused",
                "prefect.flow-run.Suspended",
            },
            match=ResourceSpecification({"prefect.resource.id": runs}),
            match_related=of_our_flows,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=settings.absent_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name=None,
                force=False,
                message=(
                    f"No heartbeat for {settings.absent_seconds}s: its worker or host "
                    "died (cicd crash recovery)."
                ),
            )
        ],
    )
    if settings.reschedules == 0:
        return [detect]
    attempts = [str(count) for count in range(1, settings.reschedules + 1)]
    reschedule = AutomationCore(
        name=RESCHEDULE_AUTOMATION,
        description=(
            f"A crashed run of {', '.join(settings.flows)} goes back to Scheduled "
            f"(AwaitingRetry) for another worker, at most {settings.reschedules} time(s)."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            # The event's resource carries the run's attempt count (server/models/events.py).
            match=ResourceSpecification(
                {"prefect.resource.id": runs, "prefect.run-count": attempts}
            ),
            match_related=of_our_flows,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                force=False,
                message="Rescheduled after a crash (cicd crash recovery).",
            )
        ],
    )
    return [detect, reschedule]


@contextlib.contextmanager
def _client(api_url: str) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url, auth_string=auth_string_for(api_url)) as client:
        yield client


def ensure_automations(api_url: str, settings: RecoverySettings) -> list[str]:
    """Create or update the recovery automations by name; the names now on the server.

    The timings come from this call's settings; a rescheduler left from a
    stack with rescheduling switched off is deleted.
    """
    wanted = {automation.name: automation for automation in automations(settings)}
    with _client(api_url) as client:
        for name in AUTOMATIONS:
            existing = client.read_automations_by_name(name)
            automation = wanted.get(name)
            if automation is not None and len(existing) == 1:
                # Updated in place: its proactive buckets (runs being watched) stay.
                client.update_automation(existing[0].id, automation)
                continue
            for stale in existing:
                client.delete_automation(stale.id)
            if automation is not None:
                client.create_automation(automation)
    return list(wanted)
