"""The interface every service backend implements, and the types it shares.

Like pre-commit's ``lang_base.py``
(https://github.com/pre-commit/pre-commit/blob/main/pre_commit/lang_base.py),
this module holds only the protocol; ``all_services`` is the registry
(service kind + backend name -> plugin) and each backend is a small module
that imports this one and the core, never another backend nor the registry.

A backend is asked whether it can run here, starts a service and returns a
:class:`RunningService` once the service is healthy; that handle gives the
connection (:class:`ServiceEndpoint`, whose ``env`` is what the test job
gets), tells whether the service is still up, and stops it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cicd.config import render_template

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

LOG_TAIL_LINES = 50

logger = logging.getLogger("cicd.services")


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where a started service listens and how to log in."""

    name: str
    host: str
    port: int
    http_port: int | None
    user: str
    password: str

    @property
    def uri(self) -> str:
        return f"bolt://{self.host}:{self.port}"

    def placeholders(self) -> dict[str, str]:
        """Values for ``cicd.config.render_template`` (the ``export`` templates)."""
        return {
            "uri": self.uri,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": str(self.port),
            "http_port": "" if self.http_port is None else str(self.http_port),
        }

    def env(self, export: dict[str, str]) -> dict[str, str]:
        """The variables a test job gets: each ``export`` template filled in."""
        values = self.placeholders()
        return {name: render_template(template, values) for name, template in export.items()}


class RunningService(Protocol):
    """A started, healthy service."""

    @property
    def endpoint(self) -> ServiceEndpoint:
        """How to connect; ``endpoint.env(config.export)`` is the test job's environment."""
        ...

    @property
    def ident(self) -> str:
        """What the backend knows the service by (a PID, a container id), for logs."""
        ...

    def exit_reason(self) -> str | None:
        """Why the service is gone, or ``None`` while it still runs."""
        ...

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The service's last log lines, for failure messages."""
        ...

    def stop(self) -> None:
        """Stop the service and remove what it left on disk. Idempotent."""
        ...


class ServiceBackend(Protocol):
    """One way to run one kind of service (a local process, a container)."""

    @property
    def name(self) -> str:
        """The value of ``services.<name>.backend`` that selects this backend."""
        ...

    def available(self) -> bool:
        """This backend can start services on this machine now."""
        ...

    def unavailable_reason(self) -> str:
        """What is missing when :meth:`available` is False (for the error message)."""
        ...

    def start(self, name: str, config: ServiceConfig, run_dir: Path) -> RunningService:
        """Start the service and return once it is healthy.

        Raises ``InfrastructureError`` (with the service's log tail) when it
        exits or the health deadline passes; nothing is left running then.
        """
        ...

    def reap_orphans(self) -> list[str]:
        """Stop services whose owning flow died without stopping them; their idents."""
        ...
