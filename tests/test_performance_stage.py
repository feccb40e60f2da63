"""The performance-baseline stage on the sample target: a baseline made with
``cicd baseline``, a regression injected into a commit is caught by the
integration flow, and the unchanged commit passes five runs out of five."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from cicd.config import load_config
from cicd.results import PipelineFailed
from cicd.sample import commit_all, git
from tasks.environments import tool_packages
from tests.conftest import BIN

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

SLOWER_SEARCH = (
    "        ranked = sorted(self._items, key=lambda item: score(query, item), reverse=True)\n",
    "        ranked = sorted(self._items, key=lambda item: score(query, item), reverse=True)\n"
    "        for _ in range(3):  # injected regression: three more scoring passes\n"
    "            sorted(self._items, key=lambda item: score(query, item), reverse=True)\n",
)


@pytest.fixture(scope="module")
def perf_repo(sample_repos: dict[str, Path]) -> Path:
    """Branches: perf-baseline (with a fresh baseline committed), perf-slow (regressed)."""
    repo = sample_repos["agentkit"]
    git(repo, "checkout", "--quiet", "-B", "perf-baseline", "main")
    config = yaml.safe_load((repo / "cicd.yaml").read_text())
    # Only the mock-LLM tests before the stage, to keep this test about the stage.
    config["tests"]["integration"] = {"paths": ["tests/integration/test_agent_llm.py"], "llm": True}
    (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    commit_all(repo, "ci: performance stage")

    result = subprocess.run(
        [str(BIN / "cicd"), "baseline", "--repo", str(repo), "--ref", "perf-baseline"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (repo / "benchmarks" / "baseline.json").is_file()
    commit_all(repo, "perf: record the benchmark baseline")

    git(repo, "checkout", "--quiet", "-B", "perf-slow", "perf-baseline")
    memory = repo / "src" / "agentkit" / "memory.py"
    text = memory.read_text()
    assert SLOWER_SEARCH[0] in text
    memory.write_text(text.replace(SLOWER_SEARCH[0], SLOWER_SEARCH[1], 1))
    commit_all(repo, "refactor: rank memories more carefully")
    git(repo, "checkout", "--quiet", "main")
    return repo


def test_injected_regression_fails_the_stage_naming_the_benchmark(perf_repo: Path) -> None:
    from flows.integration import integration

    with pytest.raises(PipelineFailed) as failed:
        integration(repo=str(perf_repo), ref="perf-slow", llm_mode="mock")

    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["integration"].state.value == "passed"
    stage = jobs["performance-baseline"]
    assert stage.state.value == "failed"
    assert "test_memory_search_latency" in stage.reason
    assert "test_simple_query_latency" not in stage.reason
    verdicts = {row["name"]: row["verdict"] for row in stage.details["benchmarks"]}
    assert verdicts["test_memory_search_latency"] == "regression"
    assert "test_memory_search_latency" in stage.section


def test_unchanged_commit_passes_five_runs_out_of_five(perf_repo: Path, tmp_path: Path) -> None:
    from cicd.git import checkout, remove_workspace
    from tasks.benchmarks import run_benchmark_job
    from tasks.environments import ensure_environment

    work = checkout(str(perf_repo), "perf-baseline")
    try:
        config = load_config(work.path)
        assert config.benchmarks is not None
        env = ensure_environment(work.path, config.environment, tool_packages(config))
        verdicts = []
        for attempt in range(5):
            result = run_benchmark_job(
                env.python, work.path, config.benchmarks, env.environ(), tmp_path / str(attempt)
            )
            verdicts.append((result.state.value, result.reason))
    finally:
        remove_workspace(work.path)
    assert verdicts == [("passed", "")] * 5
