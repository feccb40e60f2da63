"""cicd.yaml validation and the defaults detected from pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd.config import detect_defaults, load_config, parse_config
from cicd.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tests: {unit: {paths: [tests], timeout: soon}}", "field 'tests.unit.timeout'"),
        ("qualty: {}", "field 'qualty': unknown field"),
        ("tests: {unit: {paths: []}}", "field 'tests.unit.paths'"),
        ("tests: {unit: {paths: [t], services: [neo4j]}}", "unknown service 'neo4j'"),
        ("pipelines: {pr-validation: {suites: [e2e]}}", "unknown suite 'e2e'"),
        ("pipelines: {deploy: {}}", "field 'pipelines.deploy"),
        ("services: {neo4j: {version: '4.4'}}", "only Neo4j 5.26 is supported, got '4.4'"),
        ("services: {neo4j: {password: short}}", "field 'services.neo4j.password'"),
        ("services: {neo4j: {export: {DB: '{url}'}}}", "unknown placeholder {url}"),
        ("version: 2", "field 'version'"),
        ("a: [", "line 1: not valid YAML"),
        ("- just a list", "expected a mapping at the top level, got list"),
    ],
)
def test_invalid_config_names_the_file_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    message = str(error.value)
    assert message.startswith("cicd.yaml: ")
    assert expected in message


def test_empty_file_means_defaults() -> None:
    config = parse_config("")
    assert config.tests == {} and config.quality.tools() == {}


def test_config_error_survives_pickling() -> None:
    import pickle

    error = ConfigError("cicd.yaml", ["field 'x': bad"])
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.problems == ["field 'x': bad"]


def _project(root: Path, pyproject: str) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(pyproject)
    return root


def test_defaults_enable_only_configured_tools(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        '[project]\nname="pkg"\nversion="1"\n[project.optional-dependencies]\ndev=["pytest"]\n'
        "[tool.ruff]\nline-length=100\n",
    )
    config = load_config(root)
    assert list(config.quality.tools()) == ["ruff"]
    assert config.quality.ruff is not None and config.quality.ruff.paths == ["src", "tests"]
    assert config.environment.extras == ["dev"]
    assert config.tests["unit"].paths == ["tests"]
    assert config.tests["unit"].coverage == ["src/pkg"]


def test_defaults_without_tool_config_run_only_tests(tmp_path: Path) -> None:
    root = _project(tmp_path, '[project]\nname="pkg"\nversion="1"\n')
    config = detect_defaults(root)
    assert config.quality.tools() == {}
    assert config.environment.extras == []
    assert list(config.tests) == ["unit"]


def test_broken_pyproject_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project\n")
    with pytest.raises(ConfigError, match=r"^pyproject.toml: not valid TOML"):
        load_config(tmp_path)


def test_sample_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "examples" / "agentkit")
    assert set(config.tests) == {"unit", "framework", "integration"}
    assert config.tests["framework"].services == ["neo4j"]
