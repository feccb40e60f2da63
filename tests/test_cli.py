"""The ``cicd`` command line: settings in place before Prefect is imported, one
error handler (exit codes 0/1/2/3/130, one JSON object on every exit with
``--json``), the pipeline registry, and concurrent runs on a fresh embedded
Prefect (no PREFECT_API_URL: one local server, tests/test_run_server.py).

Every test runs the real CLI, mostly as a subprocess, with real git
repositories and a real Prefect server.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cicd.cli.error_handler import EXIT_INTERNAL, EXIT_INTERRUPTED, error_handler
from cicd.errors import BadInput, CicdError
from tests.conftest import BIN, REPO_ROOT, free_port, stop_process_group
from tests.sample_repos import FAILING_TEST, commit_on_branch

SETTINGS = (
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


def cli_env(**changes: str | None) -> dict[str, str]:
    """This session's environment without the Prefect defaults the CLI sets, then ``changes``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def python(
    code: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cicd(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------ settings before Prefect


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["run", "--help"], ["run", "pr-validation", "--help"], ["up", "--help"]],
)
def test_parsing_the_command_line_imports_no_prefect(argv: list[str]) -> None:
    result = python(
        f"""
        import sys
        from cicd.cli import main
        try:
            main.main({argv!r})
        except SystemExit:
            pass
        loaded = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
        print("PREFECT MODULES", loaded)
        """,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "usage: cicd" in result.stdout
    assert "PREFECT MODULES []" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "pr-validation", "--no-such-option"],
        ["run", "no-such-pipeline"],
        ["run", "release", "--json", "--ref"],
        ["no-such-command"],
    ],
)
def test_a_refused_command_line_imports_no_prefect(argv: list[str]) -> None:
    # Issue 11: an argument error answers as fast as --help (Prefect's import
    # is most of the ~10 s a command took), so it must not import Prefect either.
    result = python(
        f"""
        import sys
        from cicd.cli import main
        code = main.main({argv!r})
        loaded = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
        print("EXIT", code, "PREFECT MODULES", loaded)
        """,
        env=cli_env(),
    )
    assert "EXIT 2 PREFECT MODULES []" in result.stdout, result.stdout[-2000:] + result.stderr
    assert "usage: cicd" in result.stderr


def test_run_help_lists_every_registered_pipeline_and_its_options() -> None:
    from flows.registry import PIPELINES

    result = cicd("run", "--help", env=cli_env())
    assert result.returncode == 0
    for name in PIPELINES:
        assert name in result.stdout
    release = cicd("run", "release", "--help", env=cli_env())
    assert "--dry-run" in release.stdout and "--repository-url" in release.stdout
    assert "--llm-mode" not in release.stdout


EFFECTIVE_SETTINGS = """
    import sys
    from cicd.cli import main
    code = main.main(["run", "pr-validation", "--repo", "/nonexistent/repo", "--ref", "main"])
    # Prefect was imported by the run itself: these are the settings it saw.
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    print("EXIT", code)
    print("TIMEOUT", settings.server.ephemeral.startup_timeout_seconds)
    print("LEVEL", settings.logging.level)
    print("ANALYTICS", settings.server.analytics_enabled)
"""


@pytest.mark.usefixtures("prefect_server")
def test_the_cli_defaults_reach_prefect_through_a_run() -> None:
    result = python(EFFECTIVE_SETTINGS, env=cli_env())

    assert "EXIT 2" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "TIMEOUT 120" in result.stdout
    assert "LEVEL WARNING" in result.stdout
    assert "ANALYTICS False" in result.stdout


@pytest.mark.usefixtures("prefect_server")
def test_the_users_prefect_settings_win_over_the_cli_defaults() -> None:
    env = cli_env(
        PREFECT_LOGGING_LEVEL="ERROR", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45"
    )
    result = python(EFFECTIVE_SETTINGS, env=env)

    assert "EXIT 2" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "TIMEOUT 45" in result.stdout and "LEVEL ERROR" in result.stdout


@pytest.mark.usefixtures("prefect_server")
def test_a_run_shows_no_prefect_info_logs_by_default(sample_repos: dict[str, Path]) -> None:
    result = cicd(
        "run", "pr-validation", "--repo", str(sample_repos["agentkit"]), "--ref", "bad-config",
        env=cli_env(),
    )

    assert result.returncode == 2, result.stderr[-2000:]
    # Prefect logs "Beginning flow run ..." at INFO when its level is not WARNING.
    assert "| INFO" not in result.stderr, result.stderr[-2000:]
    assert "Beginning flow run" not in result.stderr


# ------------------------------------------------------------ one error handler


def test_bad_options_exit_2_with_one_json_object() -> None:
    result = cicd("run", "pr-validation", "--no-such-option", "--json", env=cli_env())

    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["flow"] == "pr-validation"
    assert (report["state"], report["exit_code"]) == ("error", 2)
    assert "--no-such-option" in report["error"]
    assert [line for line in result.stderr.splitlines() if line.startswith("cicd: error:")]


def test_an_unknown_pipeline_exits_2_naming_the_choices() -> None:
    result = cicd("run", "deploy-everything", env=cli_env())

    assert result.returncode == 2
    assert "invalid choice: 'deploy-everything'" in result.stderr
    assert "pr-validation" in result.stderr
    assert result.stdout == ""


@pytest.mark.usefixtures("prefect_server")
def test_bad_input_during_a_run_prints_one_json_object(sample_repos: dict[str, Path]) -> None:
    result = cicd(
        "run", "pr-validation", "--repo", str(sample_repos["agentkit"]), "--ref", "bad-config",
        "--json", env=cli_env(),
    )

    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert (report["flow"], report["state"], report["exit_code"]) == ("pr-validation", "error", 2)
    assert "tests.unit.timeout" in report["error"]


def test_an_unexpected_exception_exits_3_with_one_line_and_a_traceback_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def deep_bug() -> None:
        {}["missing"]

    with error_handler(json_output=True, flow="nightly") as outcome:
        deep_bug()

    assert outcome.code == EXIT_INTERNAL
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cicd: internal error: KeyError: 'missing' (traceback in ")
    log = Path(lines[0].rsplit("traceback in ", 1)[1].rstrip(")"))
    assert log.parent == Path(os.environ["CICD_HOME"]) / "logs"
    assert "in deep_bug" in log.read_text()
    assert json.loads(out) == {
        "flow": "nightly",
        "state": "error",
        "exit_code": 3,
        "error": "KeyError: 'missing'",
        "jobs": [],
    }


def test_a_prefect_api_that_does_not_answer_fails_the_run_in_one_line() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/api"
    result = cicd("run", "cost-report", "--json", env=cli_env(PREFECT_API_URL=nowhere))

    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("cicd: error: no Prefect API answers")
    assert json.loads(result.stdout)["state"] == "failed"


@pytest.mark.parametrize(
    ("raised", "code", "prefix"),
    [
        (BadInput("cicd.yaml: field 'x': wrong"), 2, "cicd: error: cicd.yaml: field 'x'"),
        (CicdError("git fetch failed 3 times"), 1, "cicd: error: git fetch failed"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "cicd: interrupted"),
    ],
)
def test_the_exit_code_map(
    raised: BaseException, code: int, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cicd import command

    try:
        with error_handler() as outcome:
            raise raised
    finally:
        command.reopen()  # an interrupt closes the command runner, as it should

    assert outcome.code == code
    out, err = capsys.readouterr()
    assert err.startswith(prefix) and out == ""


def test_a_corrupt_stack_state_exits_2_naming_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "local-server").mkdir(parents=True)
    (home / "local-server" / "state.json").write_text(
        json.dumps({"api_url": "http://127.0.0.1:1/api", "host": "127.0.0.1", "port": "x",
                    "processes": []})
    )
    result = cicd("down", env=cli_env(CICD_HOME=str(home)))

    assert result.returncode == 2, result.stderr
    assert "unreadable state of the local stack" in result.stderr


# ------------------------------------------------------------ the registry


def test_every_registered_pipeline_binds_to_its_flow() -> None:
    from cicd.cli.main import build_parser
    from flows.registry import PIPELINES

    for name, entry in PIPELINES.items():
        flow = entry.load()
        assert flow.name == name  # type: ignore[attr-defined]
        argv = ["run", name]
        for option in entry.options:
            argv += [option.flag] if option.switch else [option.flag, (option.choices or ["x"])[0]]
        args = build_parser().parse_args(argv)
        params = entry.parameters(vars(args), "/some/repo")
        # Raises TypeError when the CLI builds a parameter the flow does not take.
        inspect.signature(flow.fn).bind(**params)  # type: ignore[attr-defined]
        for option in entry.options:
            assert option.parameter in params


def test_options_not_given_leave_the_flows_defaults() -> None:
    from cicd.cli.main import build_parser
    from flows.registry import pipeline

    args = build_parser().parse_args(["run", "nightly", "--ref", "main"])
    assert pipeline("nightly").parameters(vars(args), "r") == {"repo": "r", "ref": "main"}
    args = build_parser().parse_args(["run", "release", "--ref", "v1"])
    assert pipeline("release").parameters(vars(args), "r") == {
        "repo": "r",
        "ref": "v1",
        "dry_run": False,
    }
    args = build_parser().parse_args(["run", "cost-report"])
    assert pipeline("cost-report").parameters(vars(args), None) == {}


# ------------------------------------------------------------ concurrent runs, embedded Prefect


def unit_only_branch(repo: Path, branch: str, base: str, test: str | None = None) -> None:
    with commit_on_branch(repo, branch, f"ci: {branch}", base=base):
        config = repo / "cicd.yaml"
        config.write_text(
            config.read_text().replace("suites: [unit, framework]", "suites: [unit]", 1)
        )
        if test is not None:
            (repo / "tests" / "unit" / "test_capitals.py").write_text(test)


@pytest.mark.slow
def test_three_runs_at_once_on_a_fresh_embedded_prefect_all_get_their_verdicts(
    sample_repos: dict[str, Path], tmp_path: Path
) -> None:
    repo = sample_repos["agentkit"]
    unit_only_branch(repo, "concurrent-green", "main")
    unit_only_branch(repo, "concurrent-red", "main", FAILING_TEST)
    env = cli_env(
        PREFECT_API_URL=None,
        PREFECT_PROFILE=None,
        PREFECT_LOCAL_STORAGE_PATH=None,
        PREFECT_HOME=str(tmp_path / "fresh-prefect-home"),
        CICD_HOME=str(tmp_path / "cicd-home"),
    )
    refs = ["concurrent-green", "concurrent-green", "concurrent-red"]
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--json", "--ref"]
    procs = [
        subprocess.Popen(
            [*argv, ref],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for ref in refs
    ]
    results: list[tuple[int, str, str]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=1200)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            stop_process_group(proc)  # type: ignore[arg-type]
        # The local server the runs shared stays up for the next run: stop it.
        down = cicd("down", env=env, timeout=120)

    assert down.returncode == 0, down.stderr
    started = Path(env["CICD_HOME"], "run-server", "started.log").read_text().splitlines()
    assert len(started) == 1, started  # one server for the three runs
    reports: list[dict[str, Any]] = []
    for _code, out, err in results:
        assert out, err[-3000:]
        reports.append(json.loads(out))
    assert [code for code, _, _ in results] == [0, 0, 1], [r.get("error") for r in reports]
    assert [r["state"] for r in reports] == ["passed", "passed", "failed"]
    red_jobs = {job["name"]: job["state"] for job in reports[2]["jobs"]}
    assert red_jobs["unit"] == "failed"
    for _, _, err in results:
        assert "Traceback" not in err, err[-3000:]
