"""The production shape without Docker: a Prefect server on a real PostgreSQL
(tests/postgres_fixture.py), behind basic auth, registered the way the compose
file's ``register`` service does it (``cicd up --server-url ... --workers 0``),
and PR runs from two processes that share nothing but that server and one
``CICD_HOME``: each its own ``PREFECT_HOME`` and its own
``PREFECT_LOCAL_STORAGE_PATH``, as two workers on two machines would have.

A job cached by the first is served from the cache to the second, because
``cicd up`` made one result storage the server's default; a failing commit
is never served as cached.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, client_environment, free_port, stop_process_group, wait_for_http
from tests.postgres_fixture import (
    PostgresServer,
    postgres_fixture,  # noqa: F401 - fixture
    prefect_server_environment,
)
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.postgres

RUN_TIMEOUT = 1200.0


@dataclass(frozen=True)
class ProtectedServer:
    api_url: str
    auth: str
    register_home: Path  # the CICD_HOME `cicd up --server-url` ran with
    root: Path
    register_output: str

    def env(self, name: str) -> dict[str, str]:
        """A client of its own: PREFECT_HOME and local result path named ``name``."""
        return client_environment(self.api_url, self.auth, self.root, name)


def cicd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def protected_server(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProtectedServer]:
    root = tmp_path_factory.mktemp("prefect-on-postgres")
    database = postgres.create_database("prefect")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    auth = f"cicd:{secrets.token_urlsafe(24)}"
    env = prefect_server_environment(database, auth, root / "server-home")
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"{api_url}/health", 240, proc)
        register_home = root / "register-home"
        client = {**env, "PREFECT_API_URL": api_url, "CICD_HOME": str(register_home)}
        del client["PREFECT_SERVER_API_AUTH_STRING"]
        register = cicd("up", "--server-url", api_url, "--workers", "0", "--no-deploy", env=client)
        assert register.returncode == 0, register.stdout + register.stderr[-3000:]
        yield ProtectedServer(api_url, auth, register_home, root, register.stdout + register.stderr)
    finally:
        stop_process_group(proc)
        log.close()


def test_the_server_on_postgresql_refuses_requests_without_the_password(
    protected_server: ProtectedServer, postgres: PostgresServer
) -> None:
    api = protected_server.api_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
    user, _, password = protected_server.auth.partition(":")
    answer = httpx.post(f"{api}/flows/filter", json={}, auth=(user, password), timeout=10)
    assert answer.status_code == 200
    assert password not in protected_server.register_output

    # Its data is in PostgreSQL: the work pool `cicd up` registered is a row there.
    import psycopg

    with psycopg.connect(postgres.url("prefect")) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM work_pool WHERE name = 'cicd-process'"
        ).fetchone() or (0,)
    assert count == 1

    # A client without the password is told what to set, in one line (exit 2).
    anonymous = protected_server.env("anonymous")
    del anonymous["PREFECT_API_AUTH_STRING"]
    anonymous["CICD_HOME"] = str(protected_server.root / "anonymous-home")
    refused = cicd("up", "--server-url", api, "--workers", "0", "--no-deploy", env=anonymous)
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert "PREFECT_API_AUTH_STRING is not set" in refused.stderr


def run_pr(server: ProtectedServer, client: str, repo: Path, ref: str) -> tuple[int, Any]:
    result = cicd(
        "run",
        "pr-validation",
        "--repo",
        str(repo),
        "--ref",
        ref,
        "--json",
        env=server.env(client),
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def states(report: dict[str, Any]) -> dict[str, str]:
    return {job["name"]: job["state"] for job in report["jobs"]}


@pytest.fixture(scope="module")
def first_runs(
    protected_server: ProtectedServer, sample_repos: dict[str, Path]
) -> dict[str, tuple[int, Any]]:
    """A green and a red commit, run once by client "a"."""
    repo = sample_repos["agentkit"]
    # A commit of its own: no other run's result can be under its keys.
    with commit_on_branch(repo, "postgres-green", "feat: green on a shared server"):
        (repo / "src" / "agentkit" / "shared.py").write_text('"""Shared."""\n')
    return {
        "green": run_pr(protected_server, "a", repo, "postgres-green"),
        "red": run_pr(protected_server, "a", repo, "failing-test"),
    }


@pytest.mark.slow
def test_pr_runs_against_prefect_on_postgresql_get_their_verdicts(
    first_runs: dict[str, tuple[int, Any]],
) -> None:
    code, green = first_runs["green"]
    assert code == 0 and green["state"] == "passed"
    assert states(green) == {"quality": "passed", "unit": "passed", "framework": "passed"}

    code, red = first_runs["red"]
    assert code == 1 and red["state"] == "failed"
    assert states(red) == {"quality": "passed", "unit": "failed", "framework": "passed"}
    unit = next(job for job in red["jobs"] if job["name"] == "unit")
    assert unit["failed"] == 1 and "test_agent_knows_capitals" in json.dumps(unit["failures"])


@pytest.mark.slow
def test_a_rerun_from_another_prefect_home_is_served_from_the_shared_cache(
    protected_server: ProtectedServer,
    first_runs: dict[str, tuple[int, Any]],
    sample_repos: dict[str, Path],
) -> None:
    repo = sample_repos["agentkit"]
    _, first_green = first_runs["green"]

    code, green = run_pr(protected_server, "b", repo, "postgres-green")
    assert code == 0 and green["state"] == "passed"
    assert states(green) == {"quality": "cached", "unit": "cached", "framework": "cached"}
    # Each served with its own verdict and counts, from the first client's run.
    unit = next(job for job in green["jobs"] if job["name"] == "unit")
    first_unit = next(job for job in first_green["jobs"] if job["name"] == "unit")
    assert (unit["passed"], unit["failed"]) == (first_unit["passed"], 0)
    origins = {job["cached_from"]["flow_run"] for job in green["jobs"]}
    assert len(origins) == 1 and origins != {""}

    # The failing commit: its passing jobs come from the cache, its failure runs again.
    code, red = run_pr(protected_server, "b", repo, "failing-test")
    assert code == 1 and red["state"] == "failed"
    assert states(red) == {"quality": "cached", "unit": "failed", "framework": "cached"}
    unit = next(job for job in red["jobs"] if job["name"] == "unit")
    assert "cached" not in unit and "served from the Prefect cache" not in unit.get("reason", "")
    assert unit["failed"] == 1

    # Where the results went: the storage `cicd up` made the server's default,
    # not either client's PREFECT_HOME or local storage path.
    shared = protected_server.register_home / "results"
    assert any(shared.iterdir())
    for client in ("a", "b"):
        local = protected_server.root / f"{client}-local-storage"
        assert not local.exists() or not any(local.iterdir()), client
        assert not (protected_server.root / f"{client}-prefect-home" / "storage").exists()
