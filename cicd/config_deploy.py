"""The ``deploy`` section of ``cicd.yaml``: environments, how a release runs,
how it is checked and how traffic moves to it (issue 12).

    deploy:
      environments:
        staging:
          runtime: process          # process (default) | docker
          replicas: 2
          start: [agentkit-serve, --port, "{port}"]
          health: {path: /healthz, interval: 0.2, count: 5, timeout: 30}
          strategy: {kind: canary, steps: [10, 50, 100], step_seconds: 3}
          analysis: {max_error_rate: 0.01, max_latency_ratio: 2.0}
        production:
          requires: staging         # only an artifact that passed staging
          branches: [main]
          approval: false           # true: pause for a person in the Prefect UI

The strategies and the analysis follow Argo Rollouts' canary steps and analysis
runs (https://argo-rollouts.readthedocs.io/en/stable/features/canary/,
https://argo-rollouts.readthedocs.io/en/stable/features/analysis/): every rule
has an interval, a count and a failure limit; no data is a failure.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cicd.config_loading import shown

RuntimeName = Literal["process", "docker"]
StrategyKind = Literal["immediate", "rolling", "blue-green", "canary", "manual"]
# What a start or health command may name: the replica's port, the release's
# virtualenv and its interpreter (tasks/deploy/process_runtime.py fills them).
START_PLACEHOLDERS = frozenset({"port", "venv", "python", "release"})
_PLACEHOLDER = re.compile(r"{(\w+)}")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {shown(value)}")
    return value


def _known_placeholders(argv: list[str]) -> list[str]:
    for arg in argv:
        unknown = set(_PLACEHOLDER.findall(arg)) - START_PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}} in {shown(arg)}; "
                f"expected one of {sorted(START_PLACEHOLDERS)}"
            )
    return argv


def _env_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"expected a name of a-z, 0-9, '-', got {shown(value)}")
    return value


Seconds = Annotated[
    float, BeforeValidator(_no_bool), Field(gt=0, le=24 * 3600.0, allow_inf_nan=False)
]
Ratio = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1, allow_inf_nan=False)]
Argv = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=1024)]],
    Field(min_length=1, max_length=64),
    AfterValidator(_known_placeholders),
]
Count = Annotated[int, BeforeValidator(_no_bool)]
EnvironmentName = Annotated[str, AfterValidator(_env_name)]
BranchName = Annotated[str, Field(min_length=1, max_length=255)]


class HealthCheck(_Model):
    """Healthy = ``count`` consecutive passing checks (seed 002: five), one every
    ``interval`` seconds, within ``timeout``; an HTTP path or a command."""

    path: Annotated[str, Field(max_length=1024, pattern=r"/\S*")] | None = "/healthz"
    command: Argv | None = None
    interval: Seconds = 0.2
    count: Count = Field(default=5, ge=1, le=1000)
    timeout: Seconds = 30.0

    @model_validator(mode="after")
    def _one_probe(self) -> HealthCheck:
        if self.command is not None and "path" in self.model_fields_set:
            raise ValueError("give a path or a command, not both")
        return self


def _percent_steps(steps: list[int]) -> list[int]:
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"steps must increase, got {steps}")
    if steps[-1] != 100:
        raise ValueError(f"the last step must be 100 (all traffic), got {steps[-1]}")
    return steps


class Strategy(_Model):
    kind: StrategyKind = "rolling"
    # canary: the canary's share of the traffic at each step, in percent.
    steps: Annotated[
        list[Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=100)]],
        Field(min_length=1, max_length=20),
        AfterValidator(_percent_steps),
    ] = [10, 50, 100]
    # How long traffic stays at a canary step while the analysis watches it.
    step_seconds: Seconds = 5.0
    # Every step (start a replica, wait healthy, switch, analyse) has a deadline
    # and is retried this many times on an infrastructure error.
    step_timeout: Seconds = 120.0
    retries: Count = Field(default=1, ge=0, le=10)
    # How long in-flight requests get after traffic left a replica set.
    drain_seconds: Annotated[
        float, BeforeValidator(_no_bool), Field(ge=0, le=600, allow_inf_nan=False)
    ] = 0.5


class Analysis(_Model):
    """Canary vs stable, from the replicas' Prometheus metrics during a step."""

    metrics_path: Annotated[str, Field(max_length=1024, pattern=r"/\S*")] = "/metrics"
    interval: Seconds = 0.5
    # A canary step fails above this 5xx share of its requests.
    max_error_rate: Ratio = 0.01
    # ... and when its latency is significantly greater (one-sided Mann-Whitney
    # on per-interval mean latencies, p < alpha) by more than this factor.
    max_latency_ratio: Annotated[
        float, BeforeValidator(_no_bool), Field(ge=1, le=1000, allow_inf_nan=False)
    ] = 2.0
    alpha: Annotated[float, BeforeValidator(_no_bool), Field(gt=0, lt=1)] = 0.05
    # Fewer canary requests than this in a step: no data, a failure.
    min_requests: Count = Field(default=1, ge=1, le=1_000_000)
    # The canary's error rate minus the stable set's (Kayenta judges the canary
    # against the baseline, https://github.com/spinnaker/kayenta): over this, the
    # step fails even when the absolute rate is under max_error_rate. None: off.
    max_error_rate_increase: Ratio | None = None
    # Measurements per step (Argo's count): the step's analysis then lasts
    # count x interval instead of the strategy's step_seconds.
    count: Count | None = Field(default=None, ge=1, le=10_000)
    # Intervals whose canary error rate is over max_error_rate that a step
    # tolerates, as Argo Rollouts' failureLimit counts failed measurements
    # (https://argo-rollouts.readthedocs.io/en/stable/features/analysis/): 0, the
    # default, fails the step at the first one.
    failure_limit: Count = Field(default=0, ge=0, le=1000)
    # Inconclusive (too few intervals to compare latency): pause for a person
    # (true) or count it as passed (false).
    pause_when_inconclusive: bool = False
    pause_timeout: Seconds = 3600.0


class Monitor(_Model):
    """After the switch, through the proxy: ``count`` checks of the health path
    ``interval`` apart, every one passing (seed 002: monitoring with five
    consecutive healthy checks); a failure rolls the release back."""

    enabled: bool = True
    count: Count = Field(default=5, ge=1, le=1000)
    interval: Seconds = 1.0


class Hooks(_Model):
    pre: list[Argv] = Field(default=[], max_length=20)
    post: list[Argv] = Field(default=[], max_length=20)
    timeout: Seconds = 300.0


class DeployEnvironment(_Model):
    runtime: RuntimeName = "process"
    replicas: Count = Field(default=2, ge=1, le=64)
    start: Argv
    # The proxy's port; none: a free one, chosen at the first deploy and kept.
    port: Count | None = Field(default=None, ge=1, le=65535)
    health: HealthCheck = HealthCheck()
    strategy: Strategy = Strategy()
    analysis: Analysis = Analysis()
    monitor: Monitor = Monitor()
    hooks: Hooks = Hooks()
    env: dict[Annotated[str, Field(pattern=r"[A-Za-z_][A-Za-z0-9_]{0,127}")], str] = Field(
        default={}, max_length=100
    )
    # Gates (seed 000: production only from main, only after staging passed).
    requires: EnvironmentName | None = None
    branches: list[BranchName] | None = Field(default=None, min_length=1, max_length=100)
    approval: bool = False
    approval_timeout: Seconds = 3600.0
    # docker runtime: the image the release wheel is installed into.
    image: Annotated[str, Field(max_length=256, pattern=r"[\w./:@-]+")] = "python:3.11-slim"


class DeployConfig(_Model):
    environments: dict[EnvironmentName, DeployEnvironment] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _requirements_exist(self) -> DeployConfig:
        for name, environment in self.environments.items():
            required = environment.requires
            if required is not None and required not in self.environments:
                raise ValueError(
                    f"field 'deploy.environments.{name}.requires': unknown environment "
                    f"{required!r}; declared: {sorted(self.environments)}"
                )
            if required == name:
                raise ValueError(
                    f"field 'deploy.environments.{name}.requires': an environment cannot "
                    "require itself"
                )
        self.order()
        return self

    def order(self) -> list[str]:
        """Environments in promotion order: each after the one it requires."""
        done: list[str] = []
        while len(done) < len(self.environments):
            ready = [
                n
                for n, e in self.environments.items()
                if n not in done and (e.requires is None or e.requires in done)
            ]
            if not ready:
                raise ValueError("field 'deploy.environments': 'requires' forms a cycle")
            done.extend(ready)
        return done
