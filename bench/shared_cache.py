"""Benchmark the cache shared by every worker (issue 16, item 2).

A Prefect server on a throwaway PostgreSQL (tests/postgres_fixture.py), behind
basic auth, registered by ``cicd up --server-url ... --workers 0`` (which makes
``$CICD_HOME/results`` the server's default result storage), and
``cicd run pr-validation`` on the full sample (with Neo4j) from two clients
that share only the server and ``CICD_HOME``: each its own ``PREFECT_HOME``
and ``PREFECT_LOCAL_STORAGE_PATH``, as two workers would.

1. a warm-up run of one commit (builds the environment, starts nothing cached);
2. a cold run of a new commit on client A;
3. a rerun of that commit on client A (same PREFECT_HOME);
4. a rerun of that commit on client B (another PREFECT_HOME).

    .venv/bin/python bench/shared_cache.py

Prints the times and their ratios to the cold run as Markdown, and writes
JSON to bench/results/shared_cache.json.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
SCRATCH = Path(tempfile.mkdtemp(prefix="cicd-bench-shared-"))
os.environ.update(CICD_HOME=str(SCRATCH / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
os.environ.setdefault(
    "CICD_NEO4J_HOME", str(Path.home() / ".cache" / "cicd-flows" / "services" / "neo4j" / "5.26.30")
)

from tests.conftest import client_environment, free_port, stop_process_group, wait_for_http  # noqa: E402
from tests.postgres_fixture import postgres_bin_dir, running_postgres  # noqa: E402
from tests.sample_repos import build_sample_repos, commit_on_branch  # noqa: E402


def client_env(api_url: str, auth: str, name: str) -> dict[str, str]:
    return client_environment(api_url, auth, SCRATCH, name)


def timed_run(env: dict[str, str], repo: Path, ref: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"run of {ref} exited {result.returncode}: {result.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return wall, report


def main() -> None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/test installs it)")
    repo = build_sample_repos(SCRATCH / "repos")["agentkit"]
    with running_postgres(bin_dir) as postgres:
        database = postgres.create_database("prefect")
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        auth = f"cicd:{secrets.token_urlsafe(24)}"
        server_env = {
            **os.environ,
            "PREFECT_HOME": str(SCRATCH / "server-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": database.replace(
                "postgresql://", "postgresql+asyncpg://", 1
            ),
            "PREFECT_SERVER_API_AUTH_STRING": auth,
            "PREFECT_API_AUTH_STRING": auth,
        }
        log = (SCRATCH / "server.log").open("wb")
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_http(f"{api_url}/health", 300, server)
            a, b = client_env(api_url, auth, "a"), client_env(api_url, auth, "b")
            subprocess.run(
                [str(BIN / "cicd"), "up", "--server-url", api_url, "--workers", "0", "--no-deploy"],
                env=a,
                check=True,
                capture_output=True,
            )
            timed_run(a, repo, "main")  # warm-up: the environment
            with commit_on_branch(repo, "bench-shared", "feat: a commit of its own"):
                (repo / "src" / "agentkit" / "bench_shared.py").write_text('"""Bench."""\n')
            cold, cold_report = timed_run(a, repo, "bench-shared")
            same, same_report = timed_run(a, repo, "bench-shared")
            other, other_report = timed_run(b, repo, "bench-shared")
        finally:
            stop_process_group(server)
            log.close()

    def jobs(report: dict[str, Any]) -> dict[str, str]:
        return {job["name"]: job["state"] for job in report["jobs"]}

    results = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()}",
        "cold_a": cold,
        "rerun_a": same,
        "rerun_b": other,
        "jobs": {
            "cold_a": jobs(cold_report),
            "rerun_a": jobs(same_report),
            "rerun_b": jobs(other_report),
        },
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared_cache.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| run | wall (s) | ratio to cold | jobs |")
    print("|---|---|---|---|")
    for name, wall, report in (
        ("cold, client A", cold, cold_report),
        ("rerun, client A (same PREFECT_HOME)", same, same_report),
        ("rerun, client B (other PREFECT_HOME)", other, other_report),
    ):
        states = ", ".join(f"{k} {v}" for k, v in jobs(report).items())
        print(f"| {name} | {wall:.1f} | {wall / cold:.2f} | {states} |")
    print(f"\n{results['machine']}")


if __name__ == "__main__":
    main()
