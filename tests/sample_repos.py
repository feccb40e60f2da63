"""The sample target turned into real repositories with one branch per scenario."""

from __future__ import annotations

from pathlib import Path

from cicd.sample import commit_all, create_sample_repo, git

LINT_ERROR = "import os  # unused: ruff F401\n"

FAILING_TEST = """from agentkit import Agent


def test_agent_knows_capitals() -> None:
    reply = Agent().process("What is the capital of France?")
    assert reply.text == "Paris", "agent forgot Paris"
"""

HANGING_TEST = """import os
import subprocess
import time


def test_hangs_with_a_child_process() -> None:
    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["HANG_PID_FILE"], "w") as handle:
        handle.write(f"{os.getpid()} {child.pid}")
    time.sleep(300)
"""


def _branch(repo: Path, name: str) -> None:
    git(repo, "checkout", "--quiet", "-B", name, "main")


def build_sample_repos(root: Path) -> dict[str, Path]:
    """One repository, a branch per scenario.

    main (green), lint-error, failing-test, docs-only, bad-config, hang.
    """
    repo = create_sample_repo(root / "agentkit")

    _branch(repo, "lint-error")
    tools = repo / "src" / "agentkit" / "tools.py"
    future = "from __future__ import annotations\n"
    tools.write_text(tools.read_text().replace(future, future + LINT_ERROR))
    commit_all(repo, "feat: add an unused import")

    _branch(repo, "failing-test")
    (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
    commit_all(repo, "test: capitals")

    _branch(repo, "docs-only")
    usage = repo / "docs" / "usage.md"
    usage.write_text(usage.read_text() + "\nMore examples coming soon.\n")
    commit_all(repo, "docs: mention more examples")

    _branch(repo, "bad-config")
    config = repo / "cicd.yaml"
    config.write_text(config.read_text().replace("timeout: 600", "timeout: soon"))
    commit_all(repo, "ci: break the config")

    _branch(repo, "hang")
    (repo / "tests" / "unit" / "test_hang.py").write_text(HANGING_TEST)
    config.write_text(
        "version: 1\n"
        "environment: {extras: [dev]}\n"
        "tests:\n"
        "  unit: {paths: [tests/unit], timeout: 8}\n"
    )
    commit_all(repo, "test: a test that hangs")

    git(repo, "checkout", "--quiet", "main")
    return {"agentkit": repo}
