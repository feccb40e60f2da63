"""Prefect settings for the CLI, put in the environment before Prefect is imported.

Prefect builds its settings from the environment once, when ``prefect`` is
first imported (the root settings context; see
https://docs.prefect.io/v3/develop/settings-and-profiles), and configures
logging at the same time. A default set afterwards is silently ignored: the
temporary server keeps its 20 s start budget and INFO logs still show. So this
module imports nothing that imports Prefect, and ``main()`` calls
:func:`apply_defaults` before any command module is imported.

``setdefault`` throughout: a value the user set wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {
    # An offline CI worker has nobody to send analytics to.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # cicd never starts Prefect's temporary server itself any more (cicd run uses
    # deployments/run_server.py), but library callers of the flows may: the
    # temporary server takes 6-11 s to start on a 2-core worker, more under
    # load, and Prefect's default budget of 20 s fails the first run of a busy one.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # A CI command prints its own verdict; Prefect's INFO lines (task created,
    # finished in state ...) bury it. PREFECT_LOGGING_LEVEL=INFO brings them back.
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


_RESULT_STORAGE_SETTINGS = (
    "PREFECT_LOCAL_STORAGE_PATH",
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
)


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set every default the user has not set; return what was set."""
    env = os.environ if environ is None else environ
    applied: dict[str, str] = {}
    for name, value in DEFAULTS.items():
        if name not in env:
            env[name] = value
            applied[name] = value
    if not env.get("PREFECT_API_URL"):
        # The one address decision of every command (cicd/cli/prefect_address.py).
        from cicd.cli import prefect_address

        address = prefect_address.apply(env)
        if address is not None:
            applied["PREFECT_API_URL"] = address.url
    if env.get("PREFECT_API_URL") and not env.get("PREFECT_API_AUTH_STRING"):
        # The API password of the stack `cicd up` started (deployments/stack_auth.py);
        # not in `applied`: it is a secret and is never shown.
        from deployments.stack_auth import auth_string_for

        auth = auth_string_for(env["PREFECT_API_URL"], env)
        if auth:
            env["PREFECT_API_AUTH_STRING"] = auth
    elif env.get("PREFECT_API_AUTH_STRING"):
        from deployments.stack_auth import register_secret

        register_secret(env["PREFECT_API_AUTH_STRING"])
    if not any(name in env for name in _RESULT_STORAGE_SETTINGS):
        # One cache per CICD_HOME, not per PREFECT_HOME: runs on one host share
        # it (deployments/stack_results.py; a server default set by `cicd up`
        # comes before this path).
        from cicd import paths

        env["PREFECT_LOCAL_STORAGE_PATH"] = str(paths.home() / "results")
        applied["PREFECT_LOCAL_STORAGE_PATH"] = env["PREFECT_LOCAL_STORAGE_PATH"]
    return applied
