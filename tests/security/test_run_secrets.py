"""No secret of a run in anything it leaves behind (issue 11, item 5).

Real runs of ``cicd run`` (a subprocess, as a person runs it) against the
session's Prefect server use three secrets: a Neo4j password (cicd.yaml),
an LLM upstream key (a Secret block; the integration run records through a
fake upstream with it) and an index token (a Secret block; the release run
publishes to a real pypiserver with it). The target tries to leak the
password: a test asserts on it and prints it in a warning. Then every place
a person or a later tool can read is searched for the three values: stdout
(``--json``) and stderr (the progress lines), every flow and task run log
and artifact read back through the Prefect API, flow and task run state
messages, the result storage, the run directories (job logs, JUnit files,
reports), the traceback logs under ``CICD_HOME``, and the LLM recordings.

The cancel tests stop ``cicd run`` (SIGINT, SIGTERM) while its Neo4j starts:
the password was printed on the error line of a cancelled start
(``set-initial-password <password>``), and was visible in ``ps``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cicd.sample import git
from tasks.llm.fake_upstream import FakeUpstream
from tests.conftest import BIN
from tests.pypiserver_fixture import PypiServer, pypiserver  # noqa: F401 - fixture
from tests.sample_repos import commit_on_branch

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.neo4j, pytest.mark.slow]

NEO4J_PASSWORD = f"neo4j-pw-{uuid.uuid4().hex}"
LLM_KEY = f"sk-llm-{uuid.uuid4().hex}"
LLM_BLOCK = "run-secrets-llm-key"
INDEX_BLOCK = "run-secrets-index-token"

LEAKY_TEST = """\
import os
import warnings

import pytest


@pytest.mark.neo4j
def test_warns_with_the_password() -> None:
    warnings.warn(f"connecting with {os.environ['NEO4J_PASSWORD']}")


def test_asserts_on_the_password() -> None:
    password = os.environ["NEO4J_PASSWORD"]
    print("the password is", password)
    assert password == "guessed", f"the password is {password}"
"""


def cicd_run(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), "run", *args, "--json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def configure(repo: Path, branch: str, upstream_url: str, **changes: Any) -> None:
    """``branch``: main with the three secrets configured and the leaky test."""
    with commit_on_branch(repo, branch, f"ci: {branch}"):
        config = yaml.safe_load((repo / "cicd.yaml").read_text())
        config["services"]["neo4j"]["password"] = NEO4J_PASSWORD
        config["llm"].update(upstream=upstream_url, api_key_secret=LLM_BLOCK)
        config.pop("benchmarks")
        config.update(changes)
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (repo / "tests" / "integration" / "test_leaky.py").write_text(LEAKY_TEST)


def prefect_texts() -> Iterator[tuple[str, str]]:
    """Every log, artifact, state message and result the session's server and
    its result storage hold, as (where, text)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        offset = 0
        while logs := client.read_logs(limit=200, offset=offset):
            for log in logs:
                yield f"log of {log.flow_run_id}/{log.task_run_id}", log.message
            offset += len(logs)
        offset = 0
        while artifacts := client.read_artifacts(limit=200, offset=offset):
            for artifact in artifacts:
                data = json.dumps(artifact.data, default=str)
                yield f"artifact {artifact.key}", f"{artifact.description} {data}"
            offset += len(artifacts)
        offset = 0  # every run of the session, page by page, not the first 200
        while flow_runs := client.read_flow_runs(limit=200, offset=offset):
            for flow_run in flow_runs:
                state = flow_run.state
                yield (
                    f"flow run {flow_run.name}",
                    f"{state.message if state else ''} {flow_run.parameters}",
                )
            offset += len(flow_runs)
        offset = 0
        while task_runs := client.read_task_runs(limit=200, offset=offset):
            for task_run in task_runs:
                state = task_run.state
                yield f"task run {task_run.name}", (state.message or "") if state else ""
            offset += len(task_runs)
    storage = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    if storage.is_dir():
        for path in storage.rglob("*"):
            if path.is_file():
                yield f"result {path}", path.read_bytes().decode("latin-1")


def cicd_home_texts() -> Iterator[tuple[str, str]]:
    """The run directories (logs, JUnit, reports, release record) and every
    other file cicd writes under CICD_HOME, but the target's own sources
    (its cicd.yaml names the password: mirrors, workspaces), the installed
    environments and the Neo4j jars."""
    home = Path(os.environ["CICD_HOME"])
    skipped = {"mirrors", "workspaces", "envs", "services", "sample"}
    for path in home.rglob("*"):
        parts = path.relative_to(home).parts
        if parts[0] in skipped or not path.is_file():
            continue
        yield str(path), path.read_bytes().decode("latin-1")


def leaks(sources: Iterator[tuple[str, str]], secrets: dict[str, str]) -> list[str]:
    found: list[str] = []
    for where, text in sources:
        for name, value in secrets.items():
            if value in text:
                found.append(f"{name} in {where}")
    return found


def test_no_secret_of_a_run_in_any_log_artifact_report_or_output(
    sample_repos: dict[str, Path],
    upstream: FakeUpstream,
    pypiserver: PypiServer,  # noqa: F811
) -> None:
    from prefect.blocks.system import Secret

    Secret(value=LLM_KEY).save(LLM_BLOCK, overwrite=True)
    Secret(value=pypiserver.password).save(INDEX_BLOCK, overwrite=True)
    secrets = {
        "the Neo4j password": NEO4J_PASSWORD,
        "the LLM key": LLM_KEY,
        "the index token": pypiserver.password,
    }
    repo = sample_repos["agentkit"]
    # The sample's integration suite: tests/integration (the leaky test too),
    # with its Neo4j and the LLM gateway.
    configure(repo, "secrets-integration", upstream.url)
    # The release: unit tests, build, publish to the pypiserver with the token.
    version = "0.9.1"
    with commit_on_branch(repo, "secrets-release", "chore: release", base="secrets-integration"):
        config = yaml.safe_load((repo / "cicd.yaml").read_text())
        config["release"] = {
            "repository_url": pypiserver.url,
            "index_url": pypiserver.simple_url,
            "credentials_secret": INDEX_BLOCK,
            "username": pypiserver.username,
        }
        config["pipelines"]["release"] = {"suites": ["unit"]}
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        pyproject = repo / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text().replace('version = "0.3.0"', f'version = "{version}"')
        )
    git(repo, "tag", f"v{version}", "secrets-release")

    integration = cicd_run(
        "integration", "--repo", str(repo), "--ref", "secrets-integration", "--llm-mode", "record"
    )
    release = cicd_run("release", "--repo", str(repo), "--ref", f"v{version}")

    # The runs did use the secrets: the leaky test failed on the password, the
    # key reached the upstream, the files reached the index.
    assert integration.returncode == 1, integration.stderr[-3000:]
    report = json.loads(integration.stdout)
    jobs = {job["name"]: job for job in report["jobs"]}
    failures = {f["name"]: f["message"] for f in jobs["integration"]["failures"]}
    assert any("test_asserts_on_the_password" in name for name in failures), failures
    assert "***" in " ".join(failures.values())
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert posts and all(r.headers.get("Authorization") == f"Bearer {LLM_KEY}" for r in posts)
    assert release.returncode == 0, release.stderr[-3000:]
    assert len(pypiserver.stored()) == 2
    # The progress lines were there to be searched (stderr is not a TTY here).
    assert "integration: neo4j: ready in" in integration.stderr, integration.stderr[-3000:]
    assert "publish: passed" in release.stderr, release.stderr[-3000:]

    recordings = Path(report["llm"]["recordings"])
    outputs = [
        ("integration stdout (--json)", integration.stdout),
        ("integration stderr", integration.stderr),
        ("release stdout (--json)", release.stdout),
        ("release stderr", release.stderr),
        *((f"recording {p}", p.read_text()) for p in recordings.rglob("*") if p.is_file()),
    ]
    junit = [p for p in Path(os.environ["CICD_HOME"]).rglob("junit-*.xml")]
    assert junit, "no JUnit file to search"

    found = leaks(iter(outputs), secrets)
    found += leaks(cicd_home_texts(), secrets)
    found += leaks(prefect_texts(), secrets)
    assert found == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cancelling_while_neo4j_starts_shows_the_password_nowhere(
    sample_repos: dict[str, Path], upstream: FakeUpstream, tmp_path: Path, signum: int
) -> None:
    repo = sample_repos["agentkit"]
    branch = f"secrets-cancel-{signum}"
    configure(repo, branch, upstream.url)
    stderr_path, stdout_path = tmp_path / "stderr", tmp_path / "stdout"
    with stderr_path.open("w") as stderr, stdout_path.open("w") as stdout:
        proc = subprocess.Popen(
            [
                str(BIN / "cicd"),
                "run",
                "pr-validation",
                "--repo",
                str(repo),
                "--ref",
                branch,
                "--json",
            ],
            env=dict(os.environ),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    visible: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while "neo4j: starting" not in stderr_path.read_text():
            assert proc.poll() is None, stderr_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "Neo4j never started"
            time.sleep(0.1)
        # While the admin tool sets the password and the server starts: no
        # command line of any process holds the password (ps shows them all).
        watch = time.monotonic() + 3
        while time.monotonic() < watch:
            visible += command_lines_with(NEO4J_PASSWORD)
            time.sleep(0.05)
        proc.send_signal(signum)
        proc.wait(180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode in (130, 128 + signum), stderr_path.read_text()[-3000:]
    printed = [
        line
        for where in (stderr_path, stdout_path)
        for line in where.read_text().splitlines()
        if NEO4J_PASSWORD in line
    ]
    found = leaks(cicd_home_texts(), {"the Neo4j password": NEO4J_PASSWORD})
    assert (printed, visible[:3], found) == ([], [], [])


def command_lines_with(secret: str) -> list[str]:
    hits: list[str] = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if secret in text:
            hits.append(f"{cmdline.parent.name}: {text[:300]}")
    return hits


def test_the_initial_password_file_quotes_every_character() -> None:
    """The picocli ``@file`` line reads back as the very password (checked
    against Neo4j's own admin tool: an unmatched extra argument is echoed)."""
    from tasks.services.neo4j_launch import ADMIN_TOOL, admin_env, argument_file_line, java_binary

    lib = Path(os.environ["CICD_NEO4J_HOME"]) / "lib"
    if not lib.is_dir():
        pytest.skip("Neo4j is not provisioned (scripts/provision-neo4j)")
    tricky = "@a \"quoted\" back\\slash #hash 'single' tab\tend"
    home = Path(os.environ["CICD_HOME"]) / "argfile-check"
    for sub in ("conf", "data", "logs", "run", "plugins", "import"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    args = home / "args"
    args.write_text("set-initial-password\nfirst\n" + argument_file_line(tricky))
    out = subprocess.run(
        [java_binary(), "-Xmx128m", "-cp", f"{lib}/*", ADMIN_TOOL, "dbms", f"@{args}"],
        env=admin_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert f"Unmatched argument at index 3: '{tricky}'" in out.stdout + out.stderr
