"""Test-session set-up: isolated state, one real Prefect server, sample repos.

Prefect reads its settings when it is imported, so the environment is set at
import time of this module, before any test module imports Prefect. Result
storage is isolated too (the test harness alone would isolate only the
database: results and caches go to ``PREFECT_HOME/storage``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tasks.environments import Environment
    from tasks.llm.fake_upstream import FakeUpstream

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cicd-tests-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PREFECT_PORT = free_port()
# The Neo4j jars stay where scripts/provision-neo4j put them (the user's CICD_HOME),
# not in this session's: 123 MB copied per session would be wasted.
_user_home = Path(os.environ.get("CICD_HOME") or Path.home() / ".cache" / "cicd-flows")
os.environ.setdefault("CICD_NEO4J_HOME", str(_user_home / "services" / "neo4j" / "5.26.30"))
# GitHub's OpenAPI description, cached there by scripts/provision-github-openapi.
os.environ.setdefault(
    "CICD_GITHUB_OPENAPI",
    str(_user_home / "openapi" / "octokit-openapi-23.0.2" / "api.github.com.json"),
)
os.environ.update(
    {
        "CICD_HOME": str(_SESSION_DIR / "cicd-home"),
        "PREFECT_HOME": str(_SESSION_DIR / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{_PREFECT_PORT}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOCAL_STORAGE_PATH": str(_SESSION_DIR / "prefect-storage"),
    }
)
os.environ.pop("PREFECT_PROFILE", None)
# `cicd run` in a test runs in its own process: a warm runner (cicd/cli/warm_runner.py)
# would outlive the test that started it. tests/test_warm_runner.py turns it on
# and stops every runner it starts.
os.environ["CICD_WARM"] = "off"

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def client_environment(api_url: str, auth: str, root: Path, name: str) -> dict[str, str]:
    """The environment of a Prefect client on a machine of its own: this
    process's, without its PREFECT_* settings, with a PREFECT_HOME and local
    result path named ``name`` under ``root`` (two workers on two machines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_API_AUTH_STRING=auth,
        PREFECT_HOME=str(root / f"{name}-prefect-home"),
        PREFECT_LOCAL_STORAGE_PATH=str(root / f"{name}-local-storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def wait_for_http(url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.request

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server (SQLite) for the whole session; stopped by PID at the end."""
    log = (_SESSION_DIR / "prefect-server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(_PREFECT_PORT),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{_PREFECT_PORT}/api/health", 180, proc)
        yield os.environ["PREFECT_API_URL"]
    finally:
        # Send the last flow-run logs while the server still listens.
        try:
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()
        except Exception:  # logs are best effort at teardown
            pass
        stop_process_group(proc)
        log.close()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on 127.0.0.1, stopped after the test."""
    from tasks.llm.fake_upstream import FakeUpstream

    fake = FakeUpstream()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def sample_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.sample_repos import build_sample_repos

    return build_sample_repos(tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="module")
def tools_env() -> Environment:
    """pytest and coverage.py, the packages a test job adds (tool_packages), in
    an environment of their own (reused across runs like any other)."""
    import shutil
    import uuid

    from cicd import paths
    from cicd.config import EnvironmentConfig
    from tasks.environments import ensure_environment

    scratch = paths.workspaces() / f"env-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        return ensure_environment(scratch, EnvironmentConfig(), ["pytest", "coverage"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
