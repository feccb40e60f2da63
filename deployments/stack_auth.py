"""The local stack's API password: Prefect's basic auth, on by default.

The OSS server has one optional guard, HTTP basic auth with a single
``user:password`` string: the server checks ``PREFECT_SERVER_API_AUTH_STRING``
on every API request but ``GET /health`` and ``GET /ready``, and clients send
``PREFECT_API_AUTH_STRING`` (https://docs.prefect.io/v3/advanced/security-settings;
``create_api_app`` in ``prefect/server/api/server.py``). The UI is served
without it, but it asks for the string before it shows anything, since all it
shows comes from the API.

``cicd up`` makes a random string for the server it starts (or takes the
caller's ``PREFECT_API_AUTH_STRING``) and keeps it beside the stack's address
(``$CICD_HOME/local-server/api-auth``, mode 0600), where the CLI reads both;
workers and ``prefect deploy`` get it in their environment. A stack on
someone else's server (``--server-url``) uses the caller's
``PREFECT_API_AUTH_STRING``, as every Prefect client does.

Nothing here imports Prefect: ``cicd --help`` must not.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cicd import masking
from cicd.errors import BadInput
from deployments.stack_state import read_state, state_dir

AUTH_FILE = "api-auth"
CLIENT_SETTING = "PREFECT_API_AUTH_STRING"
SERVER_SETTING = "PREFECT_SERVER_API_AUTH_STRING"
USER = "cicd"


def new_auth_string() -> str:
    return f"{USER}:{secrets.token_urlsafe(24)}"


def auth_file(directory: Path | None = None) -> Path:
    return (directory or state_dir()) / AUTH_FILE


def read_auth_string(directory: Path | None = None) -> str | None:
    try:
        value = auth_file(directory).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


def write_auth_string(value: str, directory: Path | None = None) -> Path:
    """Write ``value`` readable by its owner only, from the first byte on."""
    path = auth_file(directory)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    tmp.replace(path)
    return path


def forget_auth_string(directory: Path | None = None) -> None:
    auth_file(directory).unlink(missing_ok=True)


def auth_string_for(api_url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The string to send to ``api_url``: the caller's setting, else the stack's own."""
    env = os.environ if environ is None else environ
    explicit = env.get(CLIENT_SETTING)
    if explicit:
        value: str | None = explicit
    else:
        try:
            state = read_state()
        except Exception:  # an unreadable state is reported where it is used
            state = None
        value = read_auth_string() if state is not None and state.api_url == api_url else None
    if value:
        register_secret(value)
    return value


def register_secret(value: str) -> None:
    """Mask the string, and its password alone, in everything we print or log."""
    masking.register_credentials({CLIENT_SETTING: value})


def client_env(auth: str | None) -> dict[str, str]:
    return {CLIENT_SETTING: auth} if auth else {}


def server_env(auth: str | None) -> dict[str, str]:
    # The server's own clients (its services) talk to it through the API too.
    return {SERVER_SETTING: auth, CLIENT_SETTING: auth} if auth else {}


def require_access(api_url: str, auth: str | None, timeout: float = 10.0) -> None:
    """Fail with the fix when ``api_url`` refuses ``auth`` (health answers without it)."""
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{api_url}/admin/version")
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return  # not ours to judge here: the next call reports it
    except OSError:
        return
    given = "was refused" if auth else "is not set"
    raise BadInput(
        f"the Prefect API at {api_url} needs its password (HTTP basic auth): "
        f"{CLIENT_SETTING} {given}; set it to the server's {SERVER_SETTING}"
    )
