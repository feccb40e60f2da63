"""The sample target turned into real repositories with one branch per scenario."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def commit_on_branch(repo: Path, branch: str, message: str, base: str = "main") -> Iterator[Path]:
    """Check ``branch`` out from ``base``, commit what the block changed, go back to main.

    Inside the block the working tree is ``base``'s; after it, main's again, so
    every test starts from the same tree whatever branches others made.
    """
    git(repo, "checkout", "--quiet", "-B", branch, base)
    try:
        yield repo
        commit_all(repo, message)
    except BaseException:
        # A block that failed half-way must not leave files for the next commit.
        git(repo, "reset", "--quiet", "--hard")
        git(repo, "clean", "-fdq")
        raise
    finally:
        git(repo, "checkout", "--quiet", "main")


def build_sample_repos(root: Path) -> dict[str, Path]:
    """One repository, a branch per scenario.

    main (green), lint-error, failing-test, docs-only, bad-config, hang;
    release-good, release-errors (5 % errors), release-unhealthy (deploys).
    """
    repo = create_sample_repo(root / "agentkit")

    with commit_on_branch(repo, "lint-error", "feat: add an unused import"):
        tools = repo / "src" / "agentkit" / "tools.py"
        future = "from __future__ import annotations\n"
        tools.write_text(tools.read_text().replace(future, future + LINT_ERROR))

    with commit_on_branch(repo, "failing-test", "test: capitals"):
        (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)

    with commit_on_branch(repo, "docs-only", "docs: mention more examples"):
        usage = repo / "docs" / "usage.md"
        usage.write_text(usage.read_text() + "\nMore examples coming soon.\n")

    with commit_on_branch(repo, "bad-config", "ci: break the config"):
        config = repo / "cicd.yaml"
        config.write_text(config.read_text().replace("timeout: 600", "timeout: soon"))

    with commit_on_branch(repo, "hang", "test: a test that hangs"):
        (repo / "tests" / "unit" / "test_hang.py").write_text(HANGING_TEST)
        (repo / "cicd.yaml").write_text(
            "version: 1\n"
            "environment: {extras: [dev]}\n"
            "tests:\n"
            "  unit: {paths: [tests/unit], timeout: 8}\n"
        )

    # Deploy scenarios (tests/test_deploy*.py): the flags of the sample's HTTP
    # service are baked into each release's commit.
    flags = repo / "src" / "agentkit_service" / "__init__.py"
    with commit_on_branch(repo, "release-good", "feat: a good release"):
        flags.write_text(flags.read_text() + "\nRELEASE_NOTE = 'a good release'\n")
    with commit_on_branch(repo, "release-errors", "feat: a release answering 5 % errors"):
        flags.write_text(flags.read_text().replace("ERROR_EVERY = 0", "ERROR_EVERY = 20"))
    with commit_on_branch(repo, "release-unhealthy", "feat: a release that is never healthy"):
        flags.write_text(flags.read_text().replace("HEALTHY = True", "HEALTHY = False"))

    return {"agentkit": repo}
