"""SIGKILL of `cicd run` mid-job (the CLI process alone, not its children),
then any `cicd` command: nothing of the killed run is left. Issue 10, item 1.

The run uses the embedded default (the local Prefect server of `cicd run`, which
outlives runs by design and is stopped by `cicd down`) and a framework job with
Neo4j; what it owned is read from its claims before the kill.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reclaim_fault import (
    BIN,
    FRAMEWORK_WITH_NEO4J,
    Owned,
    cli_env,
    start_run,
    wait_for_neo4j,
)
from tests.sample_repos import commit_on_branch

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


@pytest.mark.parametrize("command", [["gc", "--json"], ["down"]], ids=["gc", "down"])
def test_a_sigkilled_run_leaves_nothing_after_the_next_command(
    sample_repos: dict[str, Path], tmp_path: Path, command: list[str]
) -> None:
    repo = sample_repos["agentkit"]
    branch = f"sigkill-{command[0]}"
    # A commit of its own: a cached framework result would start no server.
    with commit_on_branch(repo, branch, f"test: a Neo4j suite to kill ({command[0]})"):
        (repo / "tests" / "integration" / "test_busy.py").write_text(FRAMEWORK_WITH_NEO4J)
    env = cli_env(tmp_path / "prefect-home")
    log = tmp_path / "cicd.log"
    proc = start_run(repo, branch, env, log)
    owned = Owned(proc.pid)
    try:
        owned = wait_for_neo4j(proc, 300)
        assert {"neo4j", "workspace", "run"} <= owned.kinds, owned.kinds
        assert owned.paths and all(Path(p).exists() for p in owned.paths)

        proc.send_signal(signal.SIGKILL)  # the CLI alone: its children stay
        proc.wait()
        killed = time.monotonic()

        after = subprocess.run(
            [str(BIN / "cicd"), *command], env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        took = time.monotonic() - killed

        assert after.returncode == 0, after.stdout + after.stderr
        assert owned.leftovers() == {"processes": [], "ports": [], "paths": [], "records": []}
        assert took < 60
        for directory in owned.notes:  # the run's logs stay, marked as a killed run's
            assert json.loads((Path(directory) / "reclaimed.json").read_text())["owner"]
        if command[0] == "gc":
            kinds = {item["kind"] for item in json.loads(after.stdout)["reclaimed"]}
            assert {"neo4j", "workspace", "run"} <= kinds
            assert not any("left" in item for item in json.loads(after.stdout)["reclaimed"])
        else:
            assert "reclaimed neo4j of dead owner" in after.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        owned.kill_leftovers()
        # The local server the run started (deployments/run_server.py) is not the
        # run's: it stays for the next run until `cicd down`.
        subprocess.run([str(BIN / "cicd"), "down"], env=env, capture_output=True, timeout=120)
