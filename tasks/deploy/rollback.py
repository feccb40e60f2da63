"""Rollback: put exactly the live release back, alone, behind the proxy.

Used by the deployer when a step fails (automatic rollback), by the next run
when it finds a deploy that was killed half-way (``phase`` not idle, a pending
set on record), and by ``cicd deploy rollback ENV`` (to the previous release:
the blue-green standby when it still runs, else its replicas started again
from its own virtualenv, never rebuilt).
"""

from __future__ import annotations

import functools
from pathlib import Path

from cicd.config_deploy import DeployEnvironment
from cicd.errors import CicdError, InfrastructureError
from tasks.deploy.base import Runtime
from tasks.deploy.health import wait_healthy
from tasks.deploy.proxy import Proxy
from tasks.deploy.state import EnvironmentState, ReplicaSet, releases_dir
from tasks.services.host import free_ports


class RollbackFailed(CicdError):
    """The previous release could not be brought back."""


def retire(runtime: Runtime, replica_set: ReplicaSet) -> None:
    for replica in replica_set.replicas:
        runtime.stop(replica)
    replica_set.replicas.clear()


def fill_up(
    state: EnvironmentState,
    replica_set: ReplicaSet,
    runtime: Runtime,
    settings: DeployEnvironment,
    log_dir: Path,
) -> None:
    """Bring ``replica_set`` back to ``settings.replicas`` healthy running replicas."""
    replica_set.replicas[:] = [r for r in replica_set.replicas if runtime.running(r)]
    if len(replica_set.replicas) >= settings.replicas:
        return
    installed = runtime.install(replica_set.release, releases_dir(state.project))
    while len(replica_set.replicas) < settings.replicas:
        (port,) = free_ports(1)
        replica = runtime.start(replica_set.release, installed, port, settings, log_dir)
        replica_set.replicas.append(replica)
        state.save()
        health = wait_healthy(settings.health, port, functools.partial(runtime.running, replica))
        if not health.healthy:
            raise RollbackFailed(
                f"release {replica_set.release.id} did not come back: {health.detail}"
            )


def route_alone(state: EnvironmentState, proxy: Proxy, replica_set: ReplicaSet | None) -> None:
    servers = [(p, 1) for p in replica_set.ports] if replica_set else []
    state.routing = servers
    state.phase = "rolling back"
    state.save()
    if proxy.running():
        proxy.switch(servers)
    else:
        proxy.ensure_started(servers)
    state.proxy_pid, state.proxy_start_time = proxy.pid, proxy.start_time
    state.proxy_generation = proxy.generation


def restore_live(
    state: EnvironmentState,
    runtime: Runtime,
    proxy: Proxy,
    settings: DeployEnvironment,
    log_dir: Path,
) -> None:
    """The live release serves alone again; the candidate's replicas are stopped."""
    if state.live is not None:
        fill_up(state, state.live, runtime, settings, log_dir)
    route_alone(state, proxy, state.live)
    if state.pending is not None:
        retire(runtime, state.pending)
    state.pending = None
    state.phase = "idle"
    state.save()


def interrupted(state: EnvironmentState) -> bool:
    return state.pending is not None or state.phase != "idle"


def rollback_to_previous(
    state: EnvironmentState,
    runtime: Runtime,
    proxy: Proxy,
    settings: DeployEnvironment,
    log_dir: Path,
) -> ReplicaSet:
    """Make the previous release live again (by hand: ``cicd deploy rollback``)."""
    if interrupted(state):
        restore_live(state, runtime, proxy, settings, log_dir)
    if state.previous is None:
        raise RollbackFailed(f"environment {state.environment!r}: no previous release to restore")
    target = state.standby if state.standby and state.standby.release == state.previous else None
    if target is None:
        target = ReplicaSet(state.previous)
    state.pending = target
    state.save()
    try:
        fill_up(state, target, runtime, settings, log_dir)
    except (RollbackFailed, InfrastructureError):
        restore_live(state, runtime, proxy, settings, log_dir)
        raise
    # Routed first, recorded after: killed in between, the next run still finds
    # the current release live and this set pending, and puts the current one back.
    route_alone(state, proxy, target)
    current = state.live
    state.live, state.standby, state.pending = target, None, None
    if current is not None:
        state.previous = current.release
    state.phase = "idle"
    state.save()
    if current is not None:
        retire(runtime, current)
        state.save()
    return target
