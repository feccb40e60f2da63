"""Caches that heal: a mirror git cannot read and a damaged environment are rebuilt
once, with the reason logged, and the verdicts stay right (a failing commit fails).

Real git mirrors (``git repack`` then a pack cut short), real uv environments
(a file of pytest cut short), a real Prefect server for the pipeline runs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cicd import git as cicd_git
from cicd import paths
from cicd.git.mirror_health import pack_damage
from cicd.results import PipelineFailed
from cicd.sample import commit_all, git
from tasks.environment_check import environment_damage

CONFIG = """version: 1
tests:
  unit:
    paths: [tests]
    timeout: 300
pipelines:
  pr-validation:
    suites: [unit]
"""
PYPROJECT = '[project]\nname = "heal-probe"\nversion = "0.1.0"\n'
PASSING = "def test_adds() -> None:\n    assert 1 + 1 == 2\n"
FAILING = "def test_adds_wrong() -> None:\n    assert 1 + 1 == 3\n"


def probe_repo(root: Path) -> Path:
    """A tiny project: ``main`` passes, branch ``failing`` has a failing test."""
    repo = root / "heal-probe"
    (repo / "tests").mkdir(parents=True)
    git(root, "init", "--quiet", "-b", "main", str(repo))
    (repo / "cicd.yaml").write_text(CONFIG)
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / "tests" / "test_probe.py").write_text(PASSING)
    commit_all(repo, "feat: a passing test")
    git(repo, "checkout", "--quiet", "-b", "failing")
    (repo / "tests" / "test_wrong.py").write_text(FAILING)
    commit_all(repo, "test: a failing test")
    git(repo, "checkout", "--quiet", "main")
    return repo


def truncate_mirror_pack(mirror: Path) -> Path:
    """Pack the mirror into one pack, then cut that pack in half."""
    subprocess.run(["git", "-C", str(mirror), "repack", "-adq"], check=True)
    (pack,) = (mirror / "objects" / "pack").glob("pack-*.pack")
    data = pack.read_bytes()
    pack.chmod(0o644)
    pack.write_bytes(data[: len(data) // 2])
    return pack


def truncate_environment_file(env: Path) -> Path:
    """Cut a file of pytest short, as a new file: uv hard-links installed files from
    its cache (shared by every environment on the machine), which must stay intact."""
    (target,) = env.glob("lib/python*/site-packages/_pytest/main.py")
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data[: len(data) // 2])
    return target


def new_commit(repo: Path, branch: str, name: str) -> None:
    """A commit of its own on ``branch``: a result cached by an earlier run is not reused."""
    git(repo, "checkout", "--quiet", branch)
    (repo / "tests" / f"test_{name}.py").write_text(PASSING.replace("test_adds", f"test_{name}"))
    commit_all(repo, f"test: {name}")
    git(repo, "checkout", "--quiet", "main")


def test_a_truncated_pack_is_detected_and_the_mirror_rebuilt_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = probe_repo(tmp_path)
    first = cicd_git.checkout(str(repo), "main")
    assert first.healed == ""
    truncate_mirror_pack(first.mirror)
    assert "does not match its index" in (pack_damage(first.mirror) or "")

    with caplog.at_level(logging.WARNING, logger="cicd.git"):
        second = cicd_git.checkout(str(repo), "failing")

    assert "does not match its index" in second.healed
    assert any("cloning it again" in r.getMessage() for r in caplog.records)
    assert (second.path / "tests" / "test_wrong.py").read_text() == FAILING
    assert pack_damage(second.mirror) is None
    # Healed: the next checkout reuses the mirror.
    assert cicd_git.checkout(str(repo), "main").healed == ""


def test_environment_damage_names_the_file(tmp_path: Path) -> None:
    env = tmp_path / "env"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", str(env)], check=True)
    python = str(env / "bin" / "python")
    subprocess.run([str(uv), "pip", "install", "-q", "--python", python, "pytest"], check=True)
    assert environment_damage(env) is None

    (target,) = env.glob("lib/python*/site-packages/_pytest/main.py")
    original = target.read_bytes()
    truncate_environment_file(env)
    damage = environment_damage(env)
    assert damage is not None and damage.distribution == "pytest"
    assert "_pytest/main.py (of pytest) is" in damage.reason and "RECORD says" in damage.reason
    target.unlink()
    target.write_bytes(original)
    assert environment_damage(env) is None

    # A console script with other bytes of the same size: scripts are hashed.
    script = env / "bin" / "pytest"
    text = script.read_text()
    script.unlink()
    script.write_text(text.replace("import", "imporT", 1))
    damage = environment_damage(env)
    assert damage is not None and "bin/pytest" in damage.reason and "sha256" in damage.reason


def test_a_file_hashed_once_is_hashed_again_when_written_even_in_place(tmp_path: Path) -> None:
    """Hashes are reused only for the very file that matched (tasks/environment_check.py):
    an in-place edit of the same size, its modification time set back, is still
    caught, by this process and by one that only has the memo file."""
    import os

    from tasks import environment_check

    env = tmp_path / "env"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", str(env)], check=True)
    python = str(env / "bin" / "python")
    subprocess.run([str(uv), "pip", "install", "-q", "--python", python, "pytest"], check=True)
    (target,) = env.glob("lib/python*/site-packages/_pytest/main.py")
    original = target.read_bytes()
    target.unlink()  # our own copy: uv's cache, linked in, stays intact
    target.write_bytes(original)
    assert environment_damage(env) is None
    assert str(target) in (tmp_path / "env.verified").read_text()
    assert environment_damage(env) is None  # from the memo

    before = target.stat()
    with target.open("r+b") as handle:  # one byte other, in place
        handle.write(b"#" if original[:1] != b"#" else b"!")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    damage = environment_damage(env)
    assert damage is not None and "_pytest/main.py" in damage.reason and "sha256" in damage.reason
    environment_check._matched.clear()  # a new process: the memo file alone
    damage = environment_damage(env)
    assert damage is not None and "sha256" in damage.reason


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_runs_heal_a_corrupted_mirror_and_environment_and_keep_their_verdicts(
    tmp_path: Path,
) -> None:
    from flows.pr_validation import pr_validation

    repo = probe_repo(tmp_path)
    started = time.time()
    green = pr_validation(repo=str(repo), ref="main")
    assert green["state"] == "passed", green
    mirror = cicd_git.mirror_path(cicd_git.normalize_repo(str(repo)))
    # The probe's own environment (its pyproject is in the key): the one built by
    # this run, among those other tests of the session left.
    (env,) = [
        p
        for p in paths.environments().glob("py*")
        if (p / ".cicd-ready").is_file() and (p / ".cicd-ready").stat().st_mtime >= started - 1
    ]

    # Both caches damaged: the FAILING commit still fails, for its test.
    truncate_mirror_pack(mirror)
    truncate_environment_file(env)
    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(repo), ref="failing")
    jobs = {job.name: job for job in failed.value.report.jobs}
    unit = jobs["unit"]
    assert unit.state.value == "failed", unit
    assert unit.tests is not None and unit.tests.failed == 1
    assert [f.name for f in unit.tests.failures] == ["tests.test_wrong::test_adds_wrong"]
    assert environment_damage(env) is None and pack_damage(mirror) is None
    env_logs = list(paths.runs().glob("**/logs/environment.log"))
    assert any("is damaged, rebuilding it" in p.read_text() for p in env_logs), env_logs

    # Damaged again: a passing commit passes.
    truncate_mirror_pack(mirror)
    truncate_environment_file(env)
    new_commit(repo, "main", "again")
    again = pr_validation(repo=str(repo), ref="main")
    assert again["state"] == "passed", again
    assert environment_damage(env) is None and pack_damage(mirror) is None


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_cached_rerun_skips_the_environment_yet_a_job_that_runs_heals_it(
    tmp_path: Path,
) -> None:
    """Every job served from the cache: nothing runs in the environment, so it is
    neither checked nor rebuilt. A cached pass that cannot be read is no pass:
    the job runs, in an environment checked (and healed) first. A failing commit
    is never served from the cache."""
    import os

    from cicd.config import load_config
    from flows.pr_validation import pr_validation
    from tasks.environments import planned_environment, tool_packages

    repo = probe_repo(tmp_path)
    new_commit(repo, "main", "rerun")
    started = time.time()
    assert pr_validation(repo=str(repo), ref="main")["state"] == "passed"
    # The probe's environment (shared with the other probe runs of the session).
    config = load_config(repo)
    packages = tool_packages(config, [config.tests["unit"]])
    env = planned_environment(repo, config.environment, packages).path
    assert environment_damage(env) is None
    storage = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    written = [p for p in storage.glob("cicd-job-*") if p.stat().st_mtime >= started - 1]
    assert written, "the pass was not cached"

    truncate_environment_file(env)
    rerun = pr_validation(repo=str(repo), ref="main")
    assert {job["state"] for job in rerun["jobs"]} == {"cached"}, rerun
    assert environment_damage(env) is not None  # not looked at: nothing ran in it

    for record in written:
        record.write_bytes(b"{ cut short")
    healed = pr_validation(repo=str(repo), ref="main")
    assert {job["state"] for job in healed["jobs"]} == {"passed"}, healed
    assert environment_damage(env) is None

    for _ in range(2):
        with pytest.raises(PipelineFailed) as failed:
            pr_validation(repo=str(repo), ref="failing")
        (unit,) = failed.value.report.jobs
        assert unit.state.value == "failed" and unit.tests is not None and unit.tests.failed == 1
