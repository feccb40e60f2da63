"""cicd.yaml validation and the defaults detected from pyproject.toml.

The malformed files (bombs, escapes, bad names) are the corpus of
tests/security/test_config_bombs.py; here: what is accepted, the bounds at their
edges, and the wiring of fields that used to be accepted and ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cicd.config import detect_defaults, load_config, load_config_file, parse_config
from cicd.errors import ConfigError

UNIT = "tests: {unit: {paths: [tests]}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tests: {unit: {paths: [tests], timeout: soon}}", "field 'tests.unit.timeout'"),
        ("qualty: {}", "field 'qualty': unknown field"),
        ("tests: {unit: {paths: []}}", "field 'tests.unit.paths'"),
        ("tests: {unit: {paths: [t], services: [neo4j]}}", "unknown service 'neo4j'"),
        ("pipelines: {pr-validation: {suites: [e2e]}}", "unknown suite 'e2e'"),
        ("pipelines: {deploy: {}}", "field 'pipelines.deploy"),
        ("services: {neo4j: {version: '4.4'}}", "only Neo4j 5.26 is supported"),
        ("services: {neo4j: {version: '5.26.x'}}", "field 'services.neo4j.version'"),
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


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error_not_a_green_pipeline(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^cicd.yaml: the file is empty: it configures no job"):
        parse_config(text)


def test_version_true_is_not_version_1() -> None:
    with pytest.raises(ConfigError, match=r"field 'version'"):
        parse_config("version: true\n" + UNIT)
    assert parse_config("version: 1\n" + UNIT).version == 1


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [("tests.unit.timeout", 1, 86400), ("quality.timeout", 1, 86400)],
)
def test_timeouts_are_bounded_at_one_second_and_one_day(field: str, low: int, high: int) -> None:
    def config(value: object) -> str:
        if field == "quality.timeout":
            return f"{UNIT}quality: {{ruff: {{paths: [src]}}, timeout: {value}}}\n"
        return f"tests: {{unit: {{paths: [tests], timeout: {value}}}}}\n"

    for accepted in (low, high, 900.5):
        parse_config(config(accepted))
    for refused in (low - 0.5, high + 1, ".inf", "-.inf", ".nan", "1.0e+300", "-1", "true"):
        with pytest.raises(ConfigError, match=rf"field '{field}'"):
            parse_config(config(refused))


def test_lists_are_bounded_at_their_documented_lengths() -> None:
    patterns = ", ".join(f"d{i}/**" for i in range(1000))
    assert len(parse_config(f"{UNIT}ignore_paths: [{patterns}]\n").ignore_paths) == 1000
    with pytest.raises(ConfigError, match=r"field 'ignore_paths': List should have at most 1000"):
        parse_config(f"{UNIT}ignore_paths: [{patterns}, one-more]\n")


def test_aliases_within_the_bounds_still_work() -> None:
    config = parse_config(
        "tests:\n"
        "  unit: &suite {paths: [tests/unit], timeout: 120, markers: 'not slow'}\n"
        "  again: {<<: *suite, paths: [tests/again]}\n"
    )
    assert config.tests["again"].timeout == 120 and config.tests["again"].markers == "not slow"
    assert config.tests["again"].paths == ["tests/again"]


def test_many_problems_make_one_short_line() -> None:
    suites = "".join(f"  s{i}: {{paths: [t], timeout: soon, bogus: 1}}\n" for i in range(50))
    with pytest.raises(ConfigError) as error:
        parse_config("tests:\n" + suites)
    message = str(error.value)
    assert "field 'tests.s0.timeout'" in message and "more problem(s)" in message
    assert len(message) < 300


def test_values_in_messages_are_cut_short() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config("tests: {unit: {paths: [tests], timeout: '" + "9" * 3000 + "'}}\n")
    assert "field 'tests.unit.timeout'" in str(error.value) and len(str(error.value)) < 300


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ("release: {llm_mode: live}", "field 'pipelines.release.llm_mode': not used"),
        ("release: {budget_usd: 1}", "field 'pipelines.release.budget_usd': not used"),
        ("pr-validation: {python: ['3.12']}", "field 'pipelines.pr-validation.python'"),
        ("cost-report: {llm_mode: mock}", "field 'pipelines.cost-report.llm_mode'"),
        ("nightly: {python: ['3.12.1']}", "field 'pipelines.nightly.python[0]'"),
    ],
)
def test_pipeline_settings_a_pipeline_never_reads_are_refused(settings: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.").replace("[", r"\[")):
        parse_config(f"{UNIT}pipelines:\n  {settings}\n")


def test_every_setting_a_pipeline_reads_is_accepted() -> None:
    config = parse_config(
        UNIT + "pipelines:\n"
        "  pr-validation: {suites: [unit], llm_mode: mock, budget_usd: 0, alert_usd: 1}\n"
        "  integration: {suites: [unit], llm_mode: replay, budget_usd: 0.1, alert_usd: 1}\n"
        "  nightly: {suites: [unit], llm_mode: live, budget_usd: 2, alert_usd: 5,"
        " python: ['3.11', '3.12']}\n"
        "  release: {suites: [unit]}\n"
        "  cost-report: {alert_usd: 10}\n"
    )
    assert config.settings("nightly").python == ["3.11", "3.12"]
    assert config.settings("cost-report").alert_usd == 10


def test_names_that_reach_prefect_are_prefect_block_names() -> None:
    accepted = parse_config(
        UNIT + "llm: {api_key_secret: openai-key-2}\n"
        "release: {credentials_secret: pypi-token}\nnotify: {block: slack-webhook/team-ci}\n"
    )
    assert accepted.llm.api_key_secret == "openai-key-2"
    for field, value in [
        ("llm.api_key_secret", "OpenAI_Key"),
        ("release.credentials_secret", "pypi token"),
        ("notify.block", "a/b/c"),
    ]:
        section, name = field.split(".")
        with pytest.raises(ConfigError, match=rf"field '{field}'"):
            parse_config(f"{UNIT}{section}: {{{name}: '{value}'}}\n")


def test_llm_export_placeholders_are_checked_at_load() -> None:
    parse_config(UNIT + "llm: {export: {URL: 'http://{host}:{port}/v1', KEY: '{api_key}'}}\n")
    with pytest.raises(ConfigError, match=r"field 'llm.export': KEY: unknown placeholder {key}"):
        parse_config(UNIT + "llm: {export: {KEY: '{key}'}}\n")


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
    # No path of ours: ruff's own configuration decides what it checks (issue 9).
    assert config.quality.ruff is not None and config.quality.ruff.paths == []
    assert config.environment.extras == ["dev"]
    # No path: pytest's own configuration decides what it collects.
    assert config.tests["unit"].paths == []
    assert config.tests["unit"].coverage == ["src/pkg"]


def test_defaults_that_find_nothing_to_run_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname="pkg"\nversion="1"\n')
    with pytest.raises(ConfigError, match=r"^pyproject.toml \(no cicd.yaml\): configures no job"):
        load_config(tmp_path)


def test_symlinks_that_stay_inside_the_repository_are_followed(tmp_path: Path) -> None:
    root = _project(tmp_path, '[project]\nname="pkg"\nversion="1"\n')
    (root / "ci").mkdir()
    (root / "ci" / "cicd.yaml").write_text("tests: {unit: {paths: [unit-tests]}}\n")
    (root / "cicd.yaml").symlink_to("ci/cicd.yaml")
    (root / "unit-tests").symlink_to("tests")
    assert load_config(root).tests["unit"].paths == ["unit-tests"]


def test_a_symlink_out_is_refused_even_when_the_path_looks_inside(tmp_path: Path) -> None:
    root = _project(tmp_path / "repo", '[project]\nname="pkg"\nversion="1"\n')
    (tmp_path / "elsewhere").mkdir()
    (root / "tests" / "escape").symlink_to(tmp_path / "elsewhere")
    (root / "cicd.yaml").write_text("tests: {unit: {paths: [tests/escape/deeper]}}\n")
    with pytest.raises(ConfigError, match=r"field 'tests.unit.paths\[0\]': .* leads out"):
        load_config(root)


def test_a_symlinked_pyproject_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "os-release").write_text('NAME="not the project"\n')
    (root / "pyproject.toml").symlink_to(tmp_path / "os-release")
    (root / "cicd.yaml").write_text(UNIT)
    with pytest.raises(ConfigError, match=r"^pyproject.toml: a symlink to outside the repository"):
        load_config(root)


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


def test_extras_need_a_pyproject_and_fixtures_a_directory(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "cicd.yaml").write_text(UNIT + "environment: {extras: [dev]}\n")
    with pytest.raises(ConfigError, match=r"field 'environment.extras': \['dev'\] needs a pyp"):
        load_config(tmp_path)
    (tmp_path / "cicd.yaml").write_text(UNIT + "llm: {fixtures: answers}\n")
    with pytest.raises(ConfigError, match=r"field 'llm.fixtures': directory 'answers' does not"):
        load_config(tmp_path)
    (tmp_path / "answers").mkdir()
    assert load_config(tmp_path).llm.fixtures == "answers"


def test_a_config_file_outside_a_checkout_is_read_within_the_same_bounds(tmp_path: Path) -> None:
    path = tmp_path / "cost.yaml"
    path.write_text("pipelines:\n  cost-report: {alert_usd: 3}\n  nightly: {alert_usd: 1}\n")
    assert load_config_file(path).settings("cost-report").alert_usd == 3
    path.write_text("pipelines:\n  cost-report: {alert_usd: .inf}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: field 'pipelines.cost-report.alert_usd'"):
        load_config_file(path)


@pytest.mark.usefixtures("prefect_server")
def test_the_cost_report_takes_its_thresholds_from_the_config_unless_given(
    tmp_path: Path,
) -> None:
    from flows.cost_report import cost_report
    from tasks.llm.calls import CallRecord
    from tasks.llm.costs import CostStore

    end = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    url = f"sqlite:///{tmp_path / 'costs.db'}"
    store = CostStore(url)
    for run_id, flow, cost in [("n1", "nightly", 3.0), ("i1", "integration", 0.5)]:
        when = end - timedelta(days=2)
        store.record_run(run_id, flow=flow, repo="r", ref="main", started_at=when)
        call = CallRecord(
            timestamp=when, mode="live", model="gpt-4o", prompt_tokens=10, completion_tokens=5,
            latency_ms=1.0, cost_usd=cost, would_cost=False, status="ok", http_status=200,
        )  # fmt: skip
        store.record_calls(run_id, [call])
    store.close()
    config = tmp_path / "cicd.yaml"
    config.write_text(
        "pipelines:\n  cost-report: {alert_usd: 2.0}\n  integration: {alert_usd: 0.25}\n"
    )

    from_file = cost_report(end=end, store_url=url, config=str(config))
    assert any("the week's LLM spend $3.5000" in alert for alert in from_file["alerts"])
    assert any("run i1 (integration" in alert for alert in from_file["alerts"])
    assert not any("run n1" in alert for alert in from_file["alerts"])

    given = cost_report(end=end, store_url=url, config=str(config), week_alert_usd=10.0)
    assert not any("week's" in alert for alert in given["alerts"])
    assert cost_report(end=end, store_url=url)["alerts"] == []


def test_other_repository_yaml_allows_long_values_but_not_alias_bombs() -> None:
    from cicd.config import load_yaml

    reply = "x" * 10_000  # an LLM fixture's reply may be long; a cicd.yaml value may not
    assert load_yaml(f"- {{match: a, reply: {reply}}}\n", "answers.yaml")[0]["reply"] == reply
    levels = zip("abcdef", "bcdefg", strict=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in levels
    )
    with pytest.raises(ConfigError, match=r"^answers.yaml: line \d+: field 'f\[\d+\]': more than"):
        load_yaml(bomb, "answers.yaml")
