"""The one decision of which Prefect API a command talks to, made before
Prefect is imported (Prefect reads ``PREFECT_API_URL`` once, at import).

In order:

1. ``PREFECT_API_URL`` when set (by the user, a flag, a worker);
2. the server of ``cicd up`` (``$CICD_HOME/local-server/state.json``) while its
   recorded process runs, or the server it was pointed at (``--server-url``);
3. the local server ``cicd run`` started before (``deployments/run_server.py``)
   while its recorded process runs;
4. none: ``cicd run`` then starts that local server; a command that needs a
   server and has none says so (``cicd webhook``).

``main()`` calls :func:`apply` for every command, so ``run``, ``up``,
``down``, ``webhook`` and ``baseline`` all see the same address. Nothing here
imports Prefect.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

ENV = "PREFECT_API_URL"
GIVEN = "PREFECT_API_URL"
STACK = "cicd up"
RUN_SERVER = "local server"


@dataclass(frozen=True)
class ApiAddress:
    url: str
    # Where it came from: GIVEN, STACK or RUN_SERVER.
    origin: str


def resolve(environ: MutableMapping[str, str] | None = None) -> ApiAddress | None:
    """The address a command should use, or None when there is none yet."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV)
    if explicit:
        return ApiAddress(explicit, GIVEN)
    # Imported here: neither imports Prefect, but the stack's modules are not
    # needed by `cicd --help`.
    from deployments import run_server
    from deployments.stack_state import configured_api_url

    stack = configured_api_url()
    if stack:
        return ApiAddress(stack, STACK)
    local = run_server.recorded_api_url()
    if local:
        return ApiAddress(local, RUN_SERVER)
    return None


_applied: list[ApiAddress | None] = []


def apply(environ: MutableMapping[str, str] | None = None) -> ApiAddress | None:
    """Resolve the address and put it in ``PREFECT_API_URL``; return it."""
    env = os.environ if environ is None else environ
    address = resolve(env)
    if address is not None:
        env[ENV] = address.url
    if env is os.environ:
        _applied[:] = [address]
    return address


def current() -> ApiAddress | None:
    """What :func:`apply` decided for this process (``main()`` calls it first),
    else a fresh decision."""
    return _applied[0] if _applied else resolve()


def use(url: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Point this process at ``url``: only before Prefect is imported."""
    import sys

    if "prefect" in sys.modules:
        # A programming error: the setting would be silently ignored.
        raise RuntimeError(f"Prefect was imported before its API address was set ({url})")
    (os.environ if environ is None else environ)[ENV] = url
