"""The deploy section of cicd.yaml, the plans, the canary weights and analysis,
and the docker runtime's specs (no Docker engine answers on this machine, so
the specs are what can be checked here)."""

from __future__ import annotations

import pytest

from cicd.config import parse_config
from cicd.config_deploy import Analysis, DeployEnvironment, Strategy
from cicd.errors import ConfigError
from tasks.deploy.analysis import Counters, StepAnalysis, judge, parse_metrics
from tasks.deploy.base import Release
from tasks.deploy.docker_runtime import container_spec, image_spec
from tasks.deploy.proxy import render, weights_for
from tasks.deploy.strategies import plan_for

BASE = "version: 1\ntests: {unit: {}}\n"
START = 'start: [agentkit-serve, --port, "{port}"]'


def config(environments: str) -> str:
    return BASE + "deploy:\n  environments:\n" + environments


def test_the_sample_configures_staging_then_production() -> None:
    from cicd.sample import SAMPLE_SOURCE

    parsed = parse_config((SAMPLE_SOURCE / "cicd.yaml").read_text())
    assert parsed.deploy is not None
    assert parsed.deploy.order() == ["staging", "production"]
    production = parsed.deploy.environments["production"]
    assert (production.requires, production.branches, production.approval) == (
        "staging",
        ["main"],
        False,
    )
    assert production.health.count == 5  # seed 002: five consecutive healthy checks


@pytest.mark.parametrize(
    ("environments", "expected"),
    [
        (
            f"    staging: {{{START}, strategy: {{kind: sudden}}}}\n",
            "deploy.environments.staging.strategy.kind",
        ),
        (f"    staging: {{{START}, strategy: {{steps: [50, 10, 100]}}}}\n", "steps must increase"),
        (f"    staging: {{{START}, strategy: {{steps: [10, 50]}}}}\n", "the last step must be 100"),
        (f"    staging: {{{START}, replicas: 0}}\n", "deploy.environments.staging.replicas"),
        (
            f"    staging: {{{START}, health: {{count: true}}}}\n",
            "deploy.environments.staging.health.count",
        ),
        ("    staging: {start: [serve, '{host}']}\n", "unknown placeholder {host}"),
        ("    staging: {replicas: 2}\n", "deploy.environments.staging.start"),
        (f"    prod: {{{START}, requires: staging}}\n", "unknown environment 'staging'"),
        (
            f"    a: {{{START}, requires: b}}\n    b: {{{START}, requires: a}}\n",
            "'requires' forms a cycle",
        ),
        (f"    staging: {{{START}, analysis: {{max_error_rate: 2}}}}\n", "analysis.max_error_rate"),
        (f"    staging: {{{START}, runtime: podman}}\n", "deploy.environments.staging.runtime"),
        (f"    Staging: {{{START}}}\n", "a name of a-z"),
        (f"    staging: {{{START}, health: {{command: [/bin/true], path: /h}}}}\n", "not both"),
    ],
)
def test_bad_deploy_settings_name_the_field(environments: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(config(environments))
    assert expected in str(error.value)
    assert str(error.value).startswith("cicd.yaml:")


def settings(kind: str, replicas: int = 2) -> DeployEnvironment:
    return DeployEnvironment(
        start=["serve"],
        replicas=replicas,
        strategy=Strategy(kind=kind, steps=[10, 50, 100]),  # type: ignore[arg-type]
    )


def test_plans_are_steps_with_timeouts_and_retries() -> None:
    canary = plan_for(settings("canary"), old_replicas=2)
    assert [s.name for s in canary.steps] == [
        "start 2 replica(s)",
        "wait until 2 healthy",
        "route 10% to the canary",
        "analyse at 10%",
        "route 50% to the canary",
        "analyse at 50%",
        "route 100% to the canary",
        "stop the stable set",
    ]
    assert all(s.timeout > 0 for s in canary.steps)
    rolling = plan_for(settings("rolling", 3), old_replicas=3)
    assert [s.action for s in rolling.steps] == ["start", "health", "route"] * 3 + ["retire"]
    blue_green = plan_for(settings("blue-green"), old_replicas=2)
    assert blue_green.steps[-1].keep_standby
    manual = plan_for(settings("manual"), old_replicas=2)
    assert not manual.executes and manual.steps
    # a first deploy has nothing to shift traffic from: a plain switch
    first = plan_for(settings("canary"), old_replicas=0)
    assert [s.action for s in first.steps] == ["start", "health", "route", "retire"]


@pytest.mark.parametrize(
    ("stable", "canary", "percent", "share"),
    [([1, 2], [3, 4], 10, 0.10), ([1, 2, 3], [4], 50, 0.50), ([1], [2, 3], 10, 0.10)],
)
def test_canary_weights_give_the_canary_its_share(
    stable: list[int], canary: list[int], percent: int, share: float
) -> None:
    weights = dict(weights_for(stable, canary, percent))
    total = sum(weights.values())
    assert sum(weights[p] for p in canary) / total == pytest.approx(share)
    assert weights_for(stable, canary, 100) == [(p, 1) for p in canary]
    text = render(8080, weights_for(stable, canary, percent), 7, __import__("pathlib").Path("/x"))
    assert f"server 127.0.0.1:{canary[0]} weight={weights[canary[0]]};" in text
    assert 'return 200 "7\\n";' in text


METRICS = """# TYPE http_requests_total counter
http_requests_total{status="200"} 95
http_requests_total{status="500"} 5
http_request_duration_seconds_sum 0.5
http_request_duration_seconds_count 100
"""


def test_analysis_fails_on_errors_and_on_no_data() -> None:
    counters = parse_metrics(METRICS)
    assert counters == Counters(100, 5, 0.5, 100)
    rules = Analysis(max_error_rate=0.01)
    assert judge(StepAnalysis(canary=counters), rules).verdict == "failed"
    assert "no data" in judge(StepAnalysis(canary=Counters()), rules).reason
    fine = Counters(100, 0, 0.5, 100)
    assert judge(StepAnalysis(canary=fine), rules).verdict == "passed"
    inconclusive = Analysis(pause_when_inconclusive=True)
    assert judge(StepAnalysis(canary=fine), inconclusive).verdict == "inconclusive"


def test_failure_limit_tolerates_that_many_failed_intervals() -> None:
    from tasks.deploy.analysis import interval_failed

    rules = Analysis(max_error_rate=0.01, failure_limit=2)
    before, after = Counters(100, 0, 0.5, 100), Counters(120, 3, 0.6, 120)
    assert interval_failed(before, after, rules)  # 3 of 20 in this interval
    assert not interval_failed(after, Counters(140, 3, 0.7, 140), rules)
    assert not interval_failed(after, after, rules)  # no request: not a failure
    # 5 % over the step, but only two failed intervals: within the limit.
    seen = StepAnalysis(canary=Counters(100, 5, 0.5, 100), failed_intervals=2)
    assert judge(seen, rules).verdict == "passed"
    seen = StepAnalysis(canary=Counters(100, 5, 0.5, 100), failed_intervals=3)
    judged = judge(seen, rules)
    assert judged.verdict == "failed" and "failure_limit 2" in judged.reason
    # The default limit, 0: the first failed interval fails the step.
    once = StepAnalysis(canary=Counters(100, 5, 0.5, 100), failed_intervals=1)
    assert judge(once, Analysis(max_error_rate=0.01)).verdict == "failed"


def test_the_canary_error_rate_is_also_judged_against_the_stable_sets() -> None:
    rules = Analysis(max_error_rate=0.10, max_error_rate_increase=0.02)
    stable = Counters(1000, 10, 5.0, 1000)  # 1 %
    worse = StepAnalysis(canary=Counters(100, 4, 0.5, 100), stable=stable)  # 4 %: +3 points
    judged = judge(worse, rules)
    assert judged.verdict == "failed" and "over the stable set's" in judged.reason
    alike = StepAnalysis(canary=Counters(100, 2, 0.5, 100), stable=stable)  # +1 point
    assert judge(alike, rules).verdict == "passed"
    # Off by default: 4 % is under the absolute bar of 10 %.
    assert judge(worse, Analysis(max_error_rate=0.10)).verdict == "passed"


def test_count_sets_how_long_a_canary_step_is_analysed() -> None:
    def analysed(analysis: dict[str, object]) -> list[float]:
        settings = DeployEnvironment.model_validate(
            {"start": ["serve", "{port}"], "strategy": {"kind": "canary", "steps": [10, 100],
             "step_seconds": 3}, "analysis": analysis}
        )  # fmt: skip
        steps = plan_for(settings, old_replicas=1).steps
        return [step.analyse_seconds for step in steps if step.action == "analyse"]

    assert analysed({}) == [3.0]
    assert analysed({"count": 8, "interval": 0.5}) == [4.0]


def test_analysis_compares_canary_latency_with_the_stable_set() -> None:
    fine = Counters(100, 0, 0.5, 100)
    slow = StepAnalysis(
        canary=fine,
        canary_latencies=[0.30, 0.32, 0.31, 0.35, 0.33, 0.34],
        stable_latencies=[0.010, 0.012, 0.011, 0.013, 0.010, 0.012],
    )
    judged = judge(slow, Analysis())
    assert judged.verdict == "failed" and "Mann-Whitney" in judged.reason
    same = StepAnalysis(
        canary=fine,
        canary_latencies=[0.010, 0.012, 0.011, 0.013],
        stable_latencies=[0.011, 0.012, 0.010, 0.013],
    )
    assert judge(same, Analysis()).verdict == "passed"


def test_docker_specs_install_exactly_the_artifact() -> None:
    release = Release("agentkit-sample", "0.3.0", "c" * 40, "main", "/a/agentkit.whl", "f" * 64)
    env = DeployEnvironment(start=["agentkit-serve", "--port", "{port}"], env={"MODE": "x"})
    image = image_spec(release, env)
    assert image["tag"] == "cicd-release/agentkit-sample:ffffffffffff"
    assert "RUN python -m pip install --no-cache-dir /wheels/agentkit.whl" in image["dockerfile"]
    spec = container_spec(release, env, 41000)
    assert spec["command"] == ["agentkit-serve", "--port", "8000"]
    assert spec["ports"] == {"8000/tcp": ("127.0.0.1", 41000)}
    assert spec["environment"]["CICD_RELEASE"] == release.id and spec["environment"]["MODE"] == "x"


def test_the_branch_gate_takes_the_ref_name_or_an_allowed_tip(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.deploy.gates import refusal

    monkeypatch.setenv("CICD_HOME", str(tmp_path))
    production = DeployEnvironment(start=["serve"], branches=["main"])
    release = Release("app", "1.0", "a" * 40, "HEAD", "/x.whl", "b" * 64)
    assert refusal("app", "production", production, release) is not None
    assert refusal("app", "production", production, release, {"main": "a" * 40}) is None
    assert refusal("app", "production", production, release, {"main": "c" * 40}) is not None
    needs_staging = DeployEnvironment(start=["serve"], requires="staging")
    why = refusal("app", "production", needs_staging, release)
    assert why is not None and "has not been deployed there successfully" in why
