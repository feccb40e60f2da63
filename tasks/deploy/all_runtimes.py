"""The registry of runtime backends (like ``tasks/services/all_services.py``)."""

from __future__ import annotations

from cicd.errors import BadInput
from tasks.deploy.base import Runtime
from tasks.deploy.docker_runtime import DockerRuntime
from tasks.deploy.process_runtime import ProcessRuntime

RUNTIMES: dict[str, Runtime] = {
    ProcessRuntime.name: ProcessRuntime(),
    DockerRuntime.name: DockerRuntime(),
}


def runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise BadInput(f"unknown deploy runtime {name!r}; known: {sorted(RUNTIMES)}") from None
