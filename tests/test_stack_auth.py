"""The local stack's API password on disk and in the CLI's settings, the CLI's
default result storage and the webhook's default address: pure parts, no server
(the stack itself is tested in tests/test_deployments.py, a protected server on
PostgreSQL in tests/test_prefect_on_postgres.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cicd import masking
from cicd.cli.prefect_settings import apply_defaults
from deployments.stack_auth import (
    auth_string_for,
    new_auth_string,
    read_auth_string,
    write_auth_string,
)
from deployments.stack_state import ProcessRecord, StackState, process_start_time, write_state

API = "http://127.0.0.1:24999/api"


@pytest.fixture
def stack_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CICD_HOME whose recorded stack server is this (running) process."""
    home = tmp_path / "home"
    monkeypatch.setenv("CICD_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    me = ProcessRecord("server", os.getpid(), process_start_time(os.getpid()), [], "")
    write_state(StackState(api_url=API, host="127.0.0.1", port=24999, processes=[me]))
    return home


def test_the_password_file_is_private_from_its_first_byte(stack_home: Path) -> None:
    old = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        auth = new_auth_string()
        path = write_auth_string(auth)
    finally:
        os.umask(old)
    assert path == stack_home / "local-server" / "api-auth"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_auth_string() == auth
    assert auth.startswith("cicd:") and len(auth) > 30


def test_the_cli_sends_the_stacks_password_and_never_shows_it(stack_home: Path) -> None:
    auth = new_auth_string()
    write_auth_string(auth)
    env: dict[str, str] = {}

    applied = apply_defaults(env)

    assert env["PREFECT_API_URL"] == API and env["PREFECT_API_AUTH_STRING"] == auth
    # `applied` is what the CLI may report: never the secret.
    assert "PREFECT_API_AUTH_STRING" not in applied
    assert auth not in repr(applied)
    password = auth.partition(":")[2]
    assert masking.mask(f"auth={auth} password={password}") == "auth=*** password=***"


def test_another_servers_address_gets_no_stack_password(stack_home: Path) -> None:
    write_auth_string(new_auth_string())
    assert auth_string_for("http://elsewhere:4200/api", {}) is None
    # The caller's own setting always wins.
    assert auth_string_for(API, {"PREFECT_API_AUTH_STRING": "me:mine-123"}) == "me:mine-123"


def test_runs_share_one_result_directory_per_cicd_home(stack_home: Path) -> None:
    env: dict[str, str] = {}
    apply_defaults(env)
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == str(stack_home / "results")

    # The user's choice of storage wins, whichever setting names it.
    path = {"PREFECT_LOCAL_STORAGE_PATH": "/srv/results"}
    apply_defaults(path)
    assert path["PREFECT_LOCAL_STORAGE_PATH"] == "/srv/results"
    block = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "s3-bucket/ci"}
    apply_defaults(block)
    assert "PREFECT_LOCAL_STORAGE_PATH" not in block


def test_the_webhook_receiver_listens_on_loopback_unless_told_otherwise() -> None:
    from cicd.cli.main import build_parser

    parser = build_parser()
    default = parser.parse_args(["webhook", "--secret-env", "CICD_WEBHOOK_SECRET"])
    assert default.host == "127.0.0.1"
    told = parser.parse_args(["webhook", "--host", "0.0.0.0", "--secret-env", "X_SECRET"])
    assert told.host == "0.0.0.0"
