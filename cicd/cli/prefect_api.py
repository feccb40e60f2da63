"""The Prefect API a run talks to: the one ``PREFECT_API_URL`` names, checked
before the run, or Prefect's temporary server, started one process at a time
per database.

A ``PREFECT_API_URL`` where nothing answers would otherwise surface, after
Prefect's client retries, as ``RuntimeError: Failed to reach API``: a
pipeline that could not run, said in one ``cicd: error:`` line (exit 1).

Without ``PREFECT_API_URL`` every ``cicd run`` starts its own temporary
Prefect server, and every one of them opens the same SQLite database
(``$PREFECT_HOME/prefect.db``), migrates it and registers the block types on
start. Three ``cicd run`` started at once on a fresh ``PREFECT_HOME`` race in
those migrations: a loser's server dies on start with
``duplicate column name: block_type_name`` and a traceback on stderr (Prefect
then retries on another port; see ``SubprocessASGIServer.start``,
https://github.com/PrefectHQ/prefect/blob/3.8.8/src/prefect/server/api/server.py).
Prefect recommends SQLite for a single server
(https://docs.prefect.io/v3/concepts/server); several servers on one file
are ours to serialize.

So the CLI starts the temporary server itself, before the flow, while holding
an exclusive lock beside the database file: migrations, block registration
and the server's first ``/health`` answer happen in one process at a time.
Prefect's client then finds that server already running (one instance per
process, ``SubprocessASGIServer()``) and uses it. The lock is released as soon
as the server answers; the runs themselves stay concurrent.

We chose this over one shared temporary server per ``CICD_HOME``: a shared
server needs an owner to stop it and a way to outlive the run that started it,
which is what ``cicd up`` already is.

The temporary server dies with its ``cicd run``, SIGKILL included (which
runs no ``finally`` and no ``atexit``): it is started in a session of its own
with a parent-death signal (prctl(2) ``PR_SET_PDEATHSIG``:
https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html; it fires
when the *thread* that started it exits, and this is the CLI's main thread),
and claimed (``cicd.ownership``) so that the next ``cicd`` command or
``cicd gc`` kills its group should the signal not have ended it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from cicd import ownership
from cicd.errors import InfrastructureError
from cicd.locking import file_lock
from deployments.stack_processes import api_healthy

SQLITE_PREFIXES = ("sqlite+aiosqlite:///", "sqlite:///")


def sqlite_path(connection_url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    for prefix in SQLITE_PREFIXES:
        if connection_url.startswith(prefix):
            rest = connection_url[len(prefix) :].split("?", 1)[0]
            return Path(rest) if rest and rest != ":memory:" else None
    return None


def require_api(url: str, timeout: float = 10.0) -> None:
    """Raise ``InfrastructureError`` unless the Prefect API at ``url`` answers ``/health``."""
    if not api_healthy(url.rstrip("/"), timeout=timeout):
        raise InfrastructureError(
            f"no Prefect API answers at {url} (PREFECT_API_URL): start the server, "
            "point PREFECT_API_URL elsewhere, or unset it to use a temporary server"
        )


def start_temporary_server() -> str | None:
    """Start this process's temporary Prefect server under the database's lock.

    Returns its API URL, or None when none is needed (``PREFECT_API_URL`` is
    set, ephemeral mode is off, or the database is not a SQLite file).
    Imports Prefect: call it after the CLI's settings are in place.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    url = settings.server.database.connection_url
    database = sqlite_path(url.get_secret_value()) if url is not None else None
    if database is None:
        return None
    with file_lock(database.with_name(database.name + ".cicd-start.lock")):
        server = _owned_server()
        server.start()
    return str(server.api_url)


def stop_temporary_server() -> None:
    """Stop this process's temporary server, if it started one (idempotent)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    if server is not None:
        server.stop()


PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def _die_with(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent's thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed


class _OwnedSpawner:
    """Stands in for the ``subprocess`` module inside Prefect's server module
    while it starts uvicorn: same call, plus a session, the parent-death
    signal and a claim. Prefect's own command line is kept as it is."""

    def __init__(self, claims: list[ownership.Claim]) -> None:
        self._claims = claims

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        parent = os.getpid()
        popen: Any = subprocess.Popen  # Prefect's arguments, passed through as they are
        proc: subprocess.Popen[Any] = popen(
            *args, **kwargs, start_new_session=True, preexec_fn=lambda: _die_with(parent)
        )
        self._claims.append(
            ownership.claim(
                "prefect-server",
                processes=(ownership.ProcessRef.of(proc.pid),),
                detail={"pid": proc.pid},
            )
        )
        return proc


def _owned_server() -> Any:
    """Prefect's temporary server (``SubprocessASGIServer``, one per process:
    Prefect's client finds this very instance), started as described above."""
    import prefect.server.api.server as prefect_server

    class OwnedServer(prefect_server.SubprocessASGIServer):
        claims: list[ownership.Claim]

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            if not hasattr(self, "claims"):
                self.claims = []
            module: Any = prefect_server
            module.subprocess = _OwnedSpawner(self.claims)
            try:
                return super()._run_uvicorn_command()
            finally:
                module.subprocess = subprocess

        def stop(self) -> None:
            super().stop()
            for held in getattr(self, "claims", []):
                held.release()

    return OwnedServer()
