"""Services around a test job: start them healthy, export their connection
variables, stop them whatever happens. Backend-neutral: every backend is
reached through the registry (``all_services``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cicd import masking
from cicd.errors import BadInput, ConfigError, InfrastructureError
from tasks import progress
from tasks.services.all_services import every_backend, select_backend
from tasks.services.base import RunningService, logger
from tasks.services.host import PortInUse

if TYPE_CHECKING:
    from cicd.config import ServiceConfig


def reap_orphans() -> list[str]:
    """Stop services left by crashed flows on this worker; return their idents
    (server PIDs, container ids)."""
    reaped: list[str] = []
    for backend in every_backend():
        reaped += backend.reap_orphans()
    return reaped


def start_service(name: str, config: ServiceConfig, run_dir: Path) -> RunningService:
    """Start one service; a failed start (port race, slow disk) is retried once."""
    backend = select_backend(config)
    # The password is masked wherever it could show: logs, reports, --json.
    masking.register([config.password])
    progress.service_starting(name, backend.name)
    started = time.monotonic()
    try:
        service = backend.start(name, config, run_dir)
    except PortInUse:
        raise  # another program's port: trying again at once changes nothing
    except InfrastructureError as exc:
        logger.warning(
            "%s: start on the %s backend failed, retrying once: %s", name, backend.name, exc
        )
        service = backend.start(name, config, run_dir)
    progress.service_ready(name, time.monotonic() - started)
    return service


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
