"""The Prefect API a run talks to when ``PREFECT_API_URL`` names one: checked
before the run.

A ``PREFECT_API_URL`` where nothing answers would otherwise surface, after
Prefect's client retries, as ``RuntimeError: Failed to reach API``: a
pipeline that could not run, said in one ``cicd: error:`` line (exit 1).

Without ``PREFECT_API_URL`` a run used to start Prefect's temporary server in
its own process (one per run, serialised under a lock beside the SQLite file
because concurrent migrations raced). It now uses the one local server that
``deployments/run_server.py`` starts once and keeps for the next runs
(issue 15, "One local server, reused").
"""

from __future__ import annotations

from cicd.errors import InfrastructureError
from deployments.stack_processes import api_healthy


def require_api(url: str, timeout: float = 10.0) -> None:
    """Raise ``InfrastructureError`` unless the Prefect API at ``url`` answers ``/health``."""
    if not api_healthy(url.rstrip("/"), timeout=timeout):
        raise InfrastructureError(
            f"no Prefect API answers at {url} (PREFECT_API_URL): start the server, "
            "point PREFECT_API_URL elsewhere, or unset it to use the local server"
        )
