"""Service containers for test jobs: a real Neo4j 5.26 per suite that asks for one.

``running_services`` is what a test job wraps itself in: servers start
(healthy) before the suite, their connection variables go into the suite's
environment, and everything stops afterwards, whatever happened.
``neo4j_slot`` bounds how many servers one worker runs at once.

Backends live beside this file (``neo4j_process``, ``neo4j_docker``) and
share ``base``; ``provision`` fetches the server's jars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cicd.errors import BadInput, ConfigError, InfrastructureError
from tasks.services import neo4j_docker, neo4j_process
from tasks.services.base import (
    RunningService,
    ServiceBackend,
    ServiceEndpoint,
    logger,
    select_backend,
)

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

__all__ = [
    "DEFAULT_MAX_SERVERS",
    "NEO4J_LIMIT",
    "RunningService",
    "ServiceBackend",
    "ServiceEndpoint",
    "max_servers",
    "neo4j_slot",
    "reap_orphans",
    "running_services",
    "select_backend",
    "start_service",
]

NEO4J_LIMIT = "cicd-neo4j-servers"
DEFAULT_MAX_SERVERS = 2
MAX_SERVERS_ENV = "CICD_NEO4J_MAX_SERVERS"


def reap_orphans() -> list[int]:
    """Kill servers left by crashed flows on this worker; return the PIDs killed.

    Docker containers of dead owners are removed as well when an engine answers.
    """
    killed = neo4j_process.reap_orphans()
    neo4j_docker.reap_containers()
    return killed


def start_service(name: str, config: ServiceConfig, run_dir: Path) -> RunningService:
    """Start one service; a failed start (port race, slow disk) is retried once."""
    backend = select_backend(config)
    try:
        return backend.start(name, config, run_dir)
    except InfrastructureError as exc:
        logger.warning(
            "%s: start on the %s backend failed, retrying once: %s", name, backend.name, exc
        )
    return backend.start(name, config, run_dir)


@contextmanager
def running_services(
    configs: dict[str, ServiceConfig], names: list[str], run_dir: Path
) -> Iterator[dict[str, str]]:
    """Start the named services; yield the env to export to the test job.

    Every server started is stopped on the way out: after a pass, a failure,
    a timeout, an exception or a cancellation (Prefect raises into the flow).
    """
    wanted = list(dict.fromkeys(names))  # a name listed twice starts once
    unknown = [name for name in wanted if name not in configs]
    if unknown:
        declared = sorted(configs) or "none"
        raise BadInput(f"unknown service {unknown[0]!r}; declared services: {declared}")
    run_dir.mkdir(parents=True, exist_ok=True)
    reap_orphans()
    env: dict[str, str] = {}
    exported_by: dict[str, str] = {}
    with ExitStack() as stack:
        for name in wanted:
            config = configs[name]
            service = start_service(name, config, run_dir)
            stack.callback(_stop, service)
            for variable, value in service.endpoint.env(config.export).items():
                if variable in exported_by:
                    raise ConfigError(
                        "cicd.yaml",
                        [
                            f"services {exported_by[variable]!r} and {name!r} both export "
                            f"{variable}; give one of them its own 'export' names"
                        ],
                    )
                exported_by[variable] = name
                env[variable] = value
        yield env


def _stop(service: RunningService) -> None:
    try:
        service.stop()
    except Exception:
        # Stopping the next service matters more than this error.
        logger.exception("%s: stopping %s failed", service.endpoint.name, service.ident)


def max_servers() -> int:
    raw = os.environ.get(MAX_SERVERS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_SERVERS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInput(f"{MAX_SERVERS_ENV}={raw!r}: expected a whole number >= 1")
    return value


def _ensure_limit(name: str, limit: int) -> bool:
    """Create the global concurrency limit if missing; False when there is no Prefect API.

    Without ``PREFECT_API_URL`` and outside a run, asking for a client would
    boot a temporary Prefect server just to count Neo4j servers: skip instead.
    An existing limit is left as is (an operator may have changed it).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    if not PREFECT_API_URL.value() and not in_run:
        return False
    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
            if problem is not None:
                logger.warning("no Prefect API (%s): Neo4j servers are not limited", problem)
                return False
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                    logger.info("created global concurrency limit %s = %d", name, limit)
                except ObjectAlreadyExists:
                    pass  # a concurrent run created it first
    except Exception as exc:  # unreachable server, HTTP errors
        logger.warning("Prefect API unusable (%s): Neo4j servers are not limited", exc)
        return False
    return True


@contextmanager
def neo4j_slot(timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of the ``cicd-neo4j-servers`` limit (created with
    ``CICD_NEO4J_MAX_SERVERS``, default 2) while the block runs.

    Each server takes ~0.5 GB and most of a core while starting; on a 2-core
    worker more than two at once only makes every start slower. With no
    Prefect API at all the block simply runs, unlimited.
    """
    limit = max_servers()
    if not _ensure_limit(NEO4J_LIMIT, limit):
        yield
        return
    from prefect.concurrency.sync import concurrency

    # strict: the limit exists now, so a missing one must not silently mean "unlimited";
    # but a hiccup renewing the lease must not kill a running test suite.
    with concurrency(
        NEO4J_LIMIT,
        occupy=1,
        timeout_seconds=timeout_seconds,
        strict=True,
        raise_on_lease_renewal_failure=False,
    ):
        yield
