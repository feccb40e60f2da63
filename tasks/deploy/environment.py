"""One environment's deploy, from its state on disk to its new state: open the
state (or make it), start its proxy, finish an interrupted deploy (roll it back),
install the release once, plan, execute, record.

The pure parts live in ``strategies``, ``analysis``, ``proxy.weights_for``; the
Prefect tasks that wrap these functions are in ``tasks/deploy/jobs.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cicd.config_deploy import DeployEnvironment
from cicd.errors import CicdError
from cicd.locking import file_lock
from tasks.deploy.all_runtimes import runtime as runtime_named
from tasks.deploy.base import Release
from tasks.deploy.deployer import Decide, Deployer, DeployResult
from tasks.deploy.health import Health, watch
from tasks.deploy.proxy import Proxy
from tasks.deploy.rollback import interrupted, restore_live, retire, rollback_to_previous
from tasks.deploy.state import (
    EnvironmentState,
    environment_dir,
    record,
    releases_dir,
)
from tasks.deploy.strategies import plan_for
from tasks.services.host import free_ports


@dataclass
class Opened:
    state: EnvironmentState
    proxy: Proxy
    recovered: bool


def _proxy_of(state: EnvironmentState) -> Proxy:
    return Proxy(
        environment_dir(state.project, state.environment) / "nginx",
        state.proxy_port,
        state.proxy_pid,
        state.proxy_start_time,
        state.proxy_generation,
    )


def open_environment(project: str, environment: str, settings: DeployEnvironment) -> Opened:
    """The environment's state with its proxy running; an interrupted deploy rolled back."""
    state = EnvironmentState.load(project, environment)
    if state is None:
        port = settings.port or free_ports(1)[0]
        state = EnvironmentState(project, environment, settings.model_dump(), port)
    state.settings = settings.model_dump()
    proxy = _proxy_of(state)
    proxy.ensure_started(state.routing)
    state.proxy_pid, state.proxy_start_time = proxy.pid, proxy.start_time
    state.proxy_generation = proxy.generation
    state.save()
    recovered = False
    if interrupted(state):
        runtime = runtime_named(settings.runtime)
        log_dir = environment_dir(project, environment) / "logs"
        candidate = state.pending.release.id if state.pending else None
        restore_live(state, runtime, proxy, settings, log_dir)
        record(
            {
                "action": "rollback",
                "project": project,
                "environment": environment,
                "release": state.live.release.to_json() if state.live else None,
                "from": candidate,
                "outcome": "success",
                "reason": "an interrupted deploy was found by the next run and rolled back",
            }
        )
        recovered = True
    elif state.live is not None and state.live.replicas:
        # Replicas are not watched between runs: every run first brings the
        # live set back to its size (a crashed replica restarted, routing updated).
        runtime = runtime_named(settings.runtime)
        dead = [r for r in state.live.replicas if not runtime.running(r)]
        if dead:
            restore_live(
                state, runtime, proxy, settings, environment_dir(project, environment) / "logs"
            )
            record(
                {
                    "action": "reconcile",
                    "project": project,
                    "environment": environment,
                    "release": state.live.release.to_json(),
                    "outcome": "success",
                    "reason": f"{len(dead)} live replica(s) had exited: restarted",
                }
            )
    return Opened(state, proxy, recovered)


def deploy_release(
    project: str,
    environment: str,
    settings: DeployEnvironment,
    release: Release,
    decide: Decide | None = None,
    extra: dict[str, Any] | None = None,
) -> DeployResult:
    """Deploy ``release`` to ``environment`` by its strategy; rolled back on a failed step."""
    lock = environment_dir(project, environment).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock):
        opened = open_environment(project, environment, settings)
        state, proxy = opened.state, opened.proxy
        runtime = runtime_named(settings.runtime)
        installed = runtime.install(release, releases_dir(project))
        live = state.live
        if live is not None and live.release == release and live.replicas:
            result = DeployResult("success", f"{release.id} is already live")
        else:
            plan = plan_for(settings, len(live.replicas) if live else 0)
            deployer = Deployer(
                state,
                settings,
                runtime,
                proxy,
                release,
                installed,
                environment_dir(project, environment) / "logs",
                decide,
            )
            result = deployer.execute(plan)
            result.steps.insert(0, {"name": "plan", "plan": plan.to_json()})
        record(
            {
                "action": "deploy",
                "project": project,
                "environment": environment,
                "release": release.to_json(),
                "strategy": settings.strategy.kind,
                "outcome": result.outcome,
                "reason": result.reason,
                "recovered_first": opened.recovered,
                **(extra or {}),
            }
        )
        return result


def rollback_environment(project: str, environment: str, reason: str) -> EnvironmentState:
    """``cicd deploy rollback ENV``: the previous release, by hand."""
    existing = EnvironmentState.load(project, environment)
    if existing is None:
        from cicd.errors import BadInput

        raise BadInput(f"environment {environment!r} of {project!r}: nothing deployed")
    settings = DeployEnvironment.model_validate(existing.settings)
    with file_lock(environment_dir(project, environment).with_suffix(".lock")):
        opened = open_environment(project, environment, settings)
        state = opened.state
        current = state.live.release if state.live else None
        runtime = runtime_named(settings.runtime)
        rollback_to_previous(
            state,
            runtime,
            opened.proxy,
            settings,
            environment_dir(project, environment) / "logs",
        )
        record(
            {
                "action": "rollback",
                "project": project,
                "environment": environment,
                "release": state.live.release.to_json() if state.live else None,
                "from": current.id if current else None,
                "from_sha256": current.sha256 if current else None,
                "outcome": "success",
                "reason": reason,
            }
        )
        return state


class MonitorFailed(CicdError):
    """The release stopped being healthy behind the proxy after its switch."""


def monitor_environment(project: str, environment: str, settings: DeployEnvironment) -> Health:
    """Seed 002's monitoring: health checks through the proxy after the switch."""
    state = EnvironmentState.load(project, environment)
    if state is None or not settings.monitor.enabled:
        return Health(True, 0, 0.0, "not monitored")
    health = watch(
        settings.health, state.proxy_port, settings.monitor.count, settings.monitor.interval
    )
    if not health.healthy:
        raise MonitorFailed(f"monitoring through the proxy after the switch: {health.detail}")
    return health


def stop_environment(project: str, environment: str) -> None:
    """Stop the proxy and every replica on record (tests' teardown; `cicd deploy stop`)."""
    state = EnvironmentState.load(project, environment)
    if state is None:
        return
    settings = DeployEnvironment.model_validate(state.settings)
    runtime = runtime_named(settings.runtime)
    for replica_set in (state.pending, state.live, state.standby):
        if replica_set is not None:
            retire(runtime, replica_set)
    _proxy_of(state).stop()
    state.pending = state.standby = None
    state.phase = "idle"
    state.proxy_pid = None
    state.save()
