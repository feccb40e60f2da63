"""Dependency groups (PEP 735) and requirements files in the target's environment.

Real uv, real virtualenvs, real packages from the index (six, iniconfig: small,
pure Python); the project under test never lands in the shared environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cicd import paths
from cicd.config import EnvironmentConfig, load_config
from cicd.errors import BadInput, ConfigError
from tasks.environments import Environment, ensure_environment, environment_key

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "grouped-target"
version = "1.0"
dependencies = []

[project.optional-dependencies]
fast = ["six"]
"""


def make_workspace(name: str, tail: str = "", requirements: str | None = None) -> Path:
    workspace = paths.workspaces() / name
    (workspace / "src" / "grouped_target").mkdir(parents=True)
    (workspace / "src" / "grouped_target" / "__init__.py").write_text("")
    (workspace / "pyproject.toml").write_text(PYPROJECT + tail)
    if requirements is not None:
        (workspace / "requirements.txt").write_text(requirements)
    return workspace


def imports(env: Environment, module: str) -> bool:
    probe = subprocess.run(
        [str(env.python), "-c", f"import {module}"],
        env=env.environ(),
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


GROUPS = """
[dependency-groups]
base = ["six"]
test = [{include-group = "base"}, "iniconfig"]
lint = ["iniconfig"]
"""


def test_the_test_group_and_what_it_includes_are_installed_by_default() -> None:
    env = ensure_environment(make_workspace("groups-default", GROUPS), EnvironmentConfig())

    assert imports(env, "six") and imports(env, "iniconfig")


def test_configured_groups_replace_the_detected_ones() -> None:
    workspace = make_workspace("groups-configured", GROUPS)
    (workspace / "cicd.yaml").write_text(
        "environment: {groups: [lint]}\ntests: {unit: {paths: [src]}}\n"
    )
    config = load_config(workspace).environment
    assert config.groups == ["lint"]

    env = ensure_environment(workspace, config)

    assert imports(env, "iniconfig") and not imports(env, "six")
    # The groups' contents are part of the key: no group, another environment.
    none = EnvironmentConfig(groups=[])
    assert environment_key(workspace, none, []) != environment_key(workspace, config, [])


def test_a_group_that_is_not_in_pyproject_is_named(tmp_path: Path) -> None:
    workspace = make_workspace("groups-unknown", GROUPS)
    (workspace / "cicd.yaml").write_text(
        "environment: {groups: [docs]}\ntests: {unit: {paths: [src]}}\n"
    )
    with pytest.raises(ConfigError, match=r"field 'environment.groups': group 'docs' is not in"):
        load_config(workspace)


def test_a_group_cycle_is_an_error_naming_the_group() -> None:
    cycle = """
[dependency-groups]
test = [{include-group = "helpers"}]
helpers = ["six", {include-group = "more"}]
more = [{include-group = "helpers"}]
"""
    workspace = make_workspace("groups-cycle", cycle)
    with pytest.raises(BadInput, match=r"group 'helpers' includes itself \(helpers -> more"):
        ensure_environment(workspace, EnvironmentConfig())


def _points_at(env: Environment, workspace: Path) -> list[Path]:
    """Files of the shared environment that name the workspace or the project."""
    site = next(env.path.glob("lib/python*/site-packages"))
    found = [p for p in site.iterdir() if "grouped_target" in p.name.replace("-", "_")]
    for pth in site.glob("*.pth"):
        if str(workspace) in pth.read_text():
            found.append(pth)
    return found


@pytest.mark.parametrize("line", ["-e .[fast]", ".[fast]", "--editable=./[fast]"])
def test_a_requirements_line_naming_the_project_installs_only_its_dependencies(
    line: str,
) -> None:
    name = "req-" + str(abs(hash(line)))
    workspace = make_workspace(name, requirements=f"# the project\n{line}\niniconfig\n")

    env = ensure_environment(workspace, EnvironmentConfig(groups=[]))

    assert imports(env, "six"), "the extra's dependency is installed"
    assert imports(env, "iniconfig")
    assert _points_at(env, workspace) == []
    # The commit is still importable in its run, from its checkout.
    assert imports(env, "grouped_target")


def test_an_editable_directory_of_the_repository_is_refused_naming_the_line() -> None:
    workspace = make_workspace("req-subdir", requirements="six\n-e ./libs/helper\n")
    (workspace / "libs" / "helper").mkdir(parents=True)
    with pytest.raises(BadInput, match=r"requirements.txt line 2: '-e ./libs/helper'"):
        ensure_environment(workspace, EnvironmentConfig(groups=[]))


def test_an_included_requirements_file_is_translated_too() -> None:
    workspace = make_workspace("req-nested", requirements="-r ci/base.txt\n")
    (workspace / "ci").mkdir()
    (workspace / "ci" / "base.txt").write_text("-e ..[fast]  # the project, from ci/\n")
    # pip reads a local path against the directory it runs in, not the file's:
    # ``..`` from the workspace root is outside it, so this one is left alone.
    with pytest.raises(Exception, match="installing the dependencies failed"):
        ensure_environment(workspace, EnvironmentConfig(groups=[]))
    (workspace / "ci" / "base.txt").write_text("-e .[fast]\n")

    env = ensure_environment(workspace, EnvironmentConfig(groups=[]))

    assert imports(env, "six") and _points_at(env, workspace) == []
