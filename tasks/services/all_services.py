"""The registry of service backends: service kind + backend name -> plugin.

Like pre-commit's ``all_languages.py``
(https://github.com/pre-commit/pre-commit/blob/main/pre_commit/all_languages.py):
the one module that knows every backend. A new backend is a module that
implements :class:`~tasks.services.base.ServiceBackend` plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cicd.errors import BadInput, InfrastructureError
from tasks.services.base import ServiceBackend
from tasks.services.neo4j_docker import Neo4jDockerBackend
from tasks.services.neo4j_process import Neo4jProcessBackend

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

# kind -> backend name -> factory. The order is ``backend: auto``'s
# preference: a Docker engine when one answers (the same image GitHub
# Actions' `services:` would run), else a local process.
BACKENDS: dict[str, dict[str, Callable[[], ServiceBackend]]] = {
    "neo4j": {
        "docker": Neo4jDockerBackend,
        "process": Neo4jProcessBackend,
    },
}
AUTO = "auto"


def backends_of(kind: str) -> dict[str, Callable[[], ServiceBackend]]:
    try:
        return BACKENDS[kind]
    except KeyError:
        raise BadInput(
            f"unknown service kind {kind!r}; expected one of {sorted(BACKENDS)}"
        ) from None


def backend(kind: str, name: str) -> ServiceBackend:
    """The plugin called ``name`` for services of ``kind``."""
    factories = backends_of(kind)
    if name not in factories:
        raise BadInput(
            f"unknown {kind} backend {name!r}; expected {AUTO} or one of {sorted(factories)}"
        )
    return factories[name]()


def select_backend(config: ServiceConfig) -> ServiceBackend:
    """The backend ``config.backend`` asks for; ``auto`` takes the first available one."""
    if config.backend != AUTO:
        chosen = backend(config.kind, config.backend)
        if not chosen.available():
            others = sorted(set(backends_of(config.kind)) - {chosen.name})
            raise InfrastructureError(
                f"service backend {chosen.name!r} was requested but "
                f"{chosen.unavailable_reason()}; use backend: {' or '.join([*others, AUTO])}"
            )
        return chosen
    candidates = [factory() for factory in backends_of(config.kind).values()]
    for candidate in candidates:
        if candidate.available():
            return candidate
    # Nothing is ready: the last (the local process) explains what it lacks when it starts.
    return candidates[-1]


def every_backend() -> list[ServiceBackend]:
    """One instance of every registered backend (to reap leftovers of all of them)."""
    return [factory() for factories in BACKENDS.values() for factory in factories.values()]
