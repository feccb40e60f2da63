"""The target's environment: built once per dependency inputs, the commit its own.

Real uv, real virtualenvs, a real build of a tiny project (its build backend
comes from the package index, as on any worker).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cicd import paths
from cicd.config import EnvironmentConfig
from cicd.git import remove_workspace
from tasks.environment_check import untrusted_reason
from tasks.environments import (
    READY_MARKER,
    ProjectBuildFailed,
    ensure_environment,
    project_site,
)

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hello-target"
version = "{version}"
dependencies = []

[project.scripts]
hello-target = "hello_target:main"
"""

MODULE = """\
def main() -> None:
    print("hello from the installed entry point")
"""


def make_workspace(name: str, version: str = "1.2.3") -> Path:
    """A workspace where checkouts go, holding a src-layout project."""
    workspace = paths.workspaces() / name
    (workspace / "src" / "hello_target").mkdir(parents=True)
    (workspace / "pyproject.toml").write_text(PYPROJECT.format(version=version))
    (workspace / "src" / "hello_target" / "__init__.py").write_text(MODULE)
    return workspace


def run_in(env_vars: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env_vars, capture_output=True, text=True, timeout=60)


def test_environment_is_reused_while_its_dependency_inputs_are_unchanged() -> None:
    config = EnvironmentConfig()
    first = ensure_environment(make_workspace("reuse-a"), config)
    again = ensure_environment(make_workspace("reuse-b"), config)

    assert not first.reused and again.reused
    assert again.path == first.path
    # Each run imports its own commit, not the one the environment was built from.
    assert again.source_paths == (paths.workspaces() / "reuse-b" / "src",)

    changed = make_workspace("reuse-c")
    pyproject = changed / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = []", 'dependencies = ["six"]')
    )
    rebuilt = ensure_environment(changed, config)
    assert rebuilt.path != first.path and not rebuilt.reused
    imported = run_in(rebuilt.environ(), [str(rebuilt.python), "-c", "import six"])
    assert imported.returncode == 0, imported.stderr


def test_our_own_settings_do_not_leak_into_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    env = ensure_environment(make_workspace("leak"), EnvironmentConfig())
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    monkeypatch.setenv("TWINE_PASSWORD", "hunter2")

    variables = env.environ({"EXTRA": "1"})

    assert "PREFECT_API_KEY" not in variables and "TWINE_PASSWORD" not in variables
    assert not any(name.startswith("CICD_") for name in variables)
    assert variables["PYTHONPATH"] == str(paths.workspaces() / "leak" / "src")
    assert variables["PATH"].split(os.pathsep)[0] == str(env.path / "bin")
    assert variables["EXTRA"] == "1"


def test_without_install_project_the_target_has_no_metadata_or_scripts() -> None:
    env = ensure_environment(make_workspace("plain"), EnvironmentConfig())

    probe = run_in(
        env.environ(),
        [str(env.python), "-c", "import importlib.metadata as m; m.version('hello-target')"],
    )

    assert probe.returncode != 0 and "PackageNotFoundError" in probe.stderr


def test_install_project_gives_entry_points_and_metadata_for_this_run_only() -> None:
    config = EnvironmentConfig(install_project=True)
    workspace = make_workspace("installed", version="4.5.6")

    env = ensure_environment(workspace, config)

    site = project_site(workspace, config.python)
    # The checkout first (imports, coverage), the build for metadata and scripts.
    assert env.source_paths == (workspace / "src", site)
    # Beside the workspace, where the target's `ruff .` cannot see it.
    assert not site.is_relative_to(workspace)
    version = run_in(
        env.environ(),
        [str(env.python), "-c", "import importlib.metadata as m; print(m.version('hello-target'))"],
    )
    assert version.stdout.strip() == "4.5.6", version.stderr
    script = run_in(env.environ(), ["hello-target"])
    assert script.stdout.strip() == "hello from the installed entry point", script.stderr
    # The shared environment itself was left as it was.
    assert not list(env.path.glob("lib/python*/site-packages/hello_target*"))

    # A second run of another commit gets its own build of that commit.
    other = make_workspace("installed-next", version="4.5.6")
    module = other / "src" / "hello_target" / "__init__.py"
    module.write_text(module.read_text().replace("hello from", "hello again from"))
    next_env = ensure_environment(other, config)
    assert next_env.reused and next_env.path == env.path
    script = run_in(next_env.environ(), ["hello-target"])
    assert script.stdout.strip() == "hello again from the installed entry point", script.stderr

    remove_workspace(workspace)
    assert not workspace.exists() and not site.exists()
    assert project_site(other, config.python).is_dir()


def test_a_project_that_does_not_build_fails_naming_the_build_error() -> None:
    workspace = make_workspace("broken")
    (workspace / "setup.py").write_text('raise SystemExit("this build is broken on purpose")\n')

    with pytest.raises(ProjectBuildFailed, match="broken on purpose"):
        ensure_environment(workspace, EnvironmentConfig(install_project=True))

    assert not project_site(workspace, EnvironmentConfig().python).exists()


def test_a_job_planned_on_the_caches_word_makes_its_environment_ready_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``planned_environment`` checks and builds nothing; the first job that runs
    in it (``ready``) does, once for every job of the run, from any thread."""
    import threading
    from dataclasses import dataclass

    from cicd.config import EnvironmentConfig
    from tasks import environments
    from tasks.environments import Environment, planned_environment, ready

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0"\n')
    made: list[Path] = []

    def ensure(workspace: Path, *_args: object) -> Environment:
        made.append(workspace)
        return Environment(tmp_path / "real", "3.11", "k", reused=True)

    monkeypatch.setattr(environments, "ensure_environment", ensure)
    config = EnvironmentConfig()
    planned = planned_environment(tmp_path, config, ["pytest"])
    assert made == [] and planned.ensure is not None
    assert planned.key == environments.environment_key(tmp_path, config, ["pytest"])

    @dataclass(frozen=True)
    class Probe:
        env: Environment

    got: list[Environment] = []
    threads = [
        threading.Thread(target=lambda: got.append(ready(Probe(planned)).env)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [tmp_path]
    assert {env.path for env in got} == {tmp_path / "real"} and all(e.ensure is None for e in got)
    ready_env = Environment(tmp_path / "other", "3.11", "k", reused=True)
    assert ready(Probe(ready_env)).env is ready_env


def test_an_environment_is_compiled_to_bytecode_once_at_install() -> None:
    # A job's interpreter cannot write .pyc files into the shared environment
    # (read-only in its box, PYTHONDONTWRITEBYTECODE): without them at install
    # every run compiles pytest and coverage again.
    workspace = make_workspace("bytecode")
    env = ensure_environment(workspace, EnvironmentConfig(), ["pytest", "coverage"])
    site = next(env.path.glob("lib/python*/site-packages"))
    compiled = {path.parent.parent.name for path in site.glob("*/__pycache__/*.pyc")}
    assert {"_pytest", "coverage", "pluggy"} <= compiled, sorted(compiled)
    # And the check of a reused environment is not fooled by them.
    assert untrusted_reason(env.path, READY_MARKER) is None
