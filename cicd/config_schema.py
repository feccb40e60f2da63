"""The ``cicd.yaml`` schema: every field, its type, its bounds and the checks
that used to run late, inside the jobs (placeholders, secret and block names,
versions), so that a bad file fails at load with exit 2, never mid-run.

Bounds are finite everywhere: a timeout of ``.inf`` or ``1e300`` would mean no
limit at all, and lists of 200,000 entries made change detection run for
minutes (issue 13, "Config bombs").
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from cicd.config_deploy import DeployConfig
from cicd.config_loading import shown
from cicd.config_types import (
    Argument,
    BlockName,
    EnvName,
    ExtraName,
    IgnorePattern,
    Name,
    PythonVersion,
    RepoPath,
    Requirement,
    Seconds,
    SlugOrBlockName,
    Url,
    Usd,
    _current_python,
    _matching,
    _Model,
    _no_bool,
    _placeholders_of,
)

LlmMode = Literal["mock", "replay", "record", "live"]
PipelineName = Literal["pr-validation", "integration", "nightly", "release", "cost-report"]

SERVICE_PLACEHOLDERS = frozenset({"uri", "user", "password", "host", "port", "http_port"})
# What tasks.llm.gateway.Gateway.env fills in.
LLM_PLACEHOLDERS = frozenset({"base_url", "api_key", "host", "port", "mode"})
# Neo4j 5 only lets the initial password of its built-in admin user be set
# (https://neo4j.com/docs/operations-manual/5/configuration/set-initial-password/).
NEO4J_ADMIN_USER = "neo4j"


class EnvironmentConfig(_Model):
    """How the target's virtualenv is built (``pip install -e .[extras]`` and more)."""

    python: PythonVersion = Field(default_factory=_current_python)
    extras: list[ExtraName] = Field(default=[], max_length=20)
    packages: list[Requirement] = Field(default=[], max_length=200)
    # PEP 735 dependency groups of pyproject.toml (https://peps.python.org/pep-0735/).
    # Unset: those of test, tests, testing, dev that exist; []: none.
    groups: list[ExtraName] | None = Field(default=None, max_length=20)
    # Off: the commit's source is put on PYTHONPATH (no build, the fastest).
    # On: the commit is also built and installed without dependencies for each
    # run, like `pip install -e .`: its entry points and metadata exist too.
    install_project: bool = False
    timeout: Seconds = 900


class ToolConfig(_Model):
    # None given: the tool's own configuration decides what it checks (mypy's
    # `files`, ruff's `include`); black and isort get ".", as projects run them.
    paths: list[RepoPath] = Field(default=[], max_length=100)
    args: list[Argument] = Field(default=[], max_length=100)


class QualityConfig(_Model):
    ruff: ToolConfig | None = None
    mypy: ToolConfig | None = None
    black: ToolConfig | None = None
    # `ruff format --check`, isort --check-only, flake8 (issue 9).
    ruff_format: ToolConfig | None = None
    isort: ToolConfig | None = None
    flake8: ToolConfig | None = None
    pyright: ToolConfig | None = None
    # `pre-commit run --all-files` is the quality step, instead of the tools above
    # (https://pre-commit.com/#pre-commit-run).
    pre_commit: bool = False
    timeout: Seconds = 600

    def tools(self) -> dict[str, ToolConfig]:
        found = {"ruff": self.ruff, "mypy": self.mypy, "black": self.black}
        found |= {"ruff_format": self.ruff_format, "isort": self.isort, "flake8": self.flake8}
        found |= {"pyright": self.pyright}
        return {name: tool for name, tool in found.items() if tool is not None}


def _paths_given(paths: list[str]) -> list[str]:
    # A default is not validated: only a `paths: []` written in cicd.yaml gets here.
    if not paths:
        raise ValueError(
            "an empty list; leave 'paths' out to let pytest's own configuration "
            "(testpaths) decide what is collected"
        )
    return paths


Percent = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=100, allow_inf_nan=False)]


def _parallel(value: object) -> object:
    if value is False:
        return "off"
    if isinstance(value, bool) or (isinstance(value, int) and not 1 <= value <= 64):
        raise ValueError(f"'off', 'auto' or a number of shards from 1 to 64, got {shown(value)}")
    return value


class SuiteConfig(_Model):
    """One pytest suite, like a GitHub Actions test job."""

    # Empty: no path argument, pytest's own configuration decides (testpaths,
    # rootdir); paths given here are passed and override it.
    paths: Annotated[list[RepoPath], AfterValidator(_paths_given)] = Field(
        default=[], max_length=100
    )
    markers: str | None = Field(default=None, max_length=1000)
    args: list[Argument] = Field(default=[], max_length=100)
    # `true`: measured with the project's own coverage.py configuration; a list:
    # those paths are coverage's --source (over the project's `source`).
    coverage: (
        Annotated[bool, Field(strict=True)] | Annotated[list[RepoPath], Field(max_length=100)]
    ) = []
    # The bar for the total; the project's own `fail_under` applies without it.
    fail_under: Percent | None = None
    # A suite that collects no test fails unless it says so.
    allow_empty: bool = False
    services: list[Name] = Field(default=[], max_length=10)
    llm: bool = False
    env: dict[EnvName, str] = Field(default={}, max_length=200)
    timeout: Seconds = 900
    # Shards run side by side (tasks/sharding.py): "auto" one per core, N, or
    # "off" (YAML's bare `off` is false) for a suite whose tests share state
    # across files. Off unless asked: sharding changes which tests share a process.
    parallel: Annotated[Literal["off", "auto"] | int, BeforeValidator(_parallel)] = "off"
    # `unittest`: the suite as `python -m unittest` runs it (tasks/unittest_junit.py),
    # for a project whose CI runs unittest; pytest's start-up and collection cost
    # more than such a suite itself (issue 15 item 4).
    runner: Literal["pytest", "unittest"] = "pytest"

    @model_validator(mode="after")
    def _runner_options(self) -> SuiteConfig:
        if self.runner == "unittest":
            given = [
                name
                for name, value in (
                    ("markers", self.markers),
                    ("args", self.args),
                    ("parallel", self.parallel != "off"),
                )
                if value
            ]
            if given:
                raise ValueError(f"runner 'unittest' takes no {', '.join(given)} (pytest options)")
        return self

    @property
    def coverage_sources(self) -> list[str]:
        return [] if isinstance(self.coverage, bool) else list(self.coverage)


def _neo4j_version(value: str) -> str:
    # "5.26" (the pinned patch release) or an exact 5.26.N: tasks/services/provision.py.
    if not re.fullmatch(r"5\.26(\.\d{1,4})?", value):
        raise ValueError(
            f"only Neo4j 5.26 is supported ('5.26' or an exact '5.26.N'), got {shown(value)}"
        )
    return value


# A fixed host port, like a GitHub Actions `ports: ["7687:7687"]` mapping. Strict int:
# YAML's `true` or "7687" is not a port.
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
# Plugins the process and docker backends can install (tasks/services/provision.py).
Neo4jPlugin = Literal["apoc"]


DEFAULT_NEO4J_EXPORT = {
    "NEO4J_URI": "{uri}",
    "NEO4J_USER": "{user}",
    "NEO4J_PASSWORD": "{password}",
    "NEO4J_TEST_URI": "{uri}",
    "NEO4J_TEST_PASSWORD": "{password}",
}


class ServiceConfig(_Model):
    """A service container, like ``services: neo4j: image: neo4j:5.26``."""

    kind: Literal["neo4j"] = "neo4j"
    version: Annotated[str, AfterValidator(_neo4j_version)] = "5.26"
    backend: Literal["auto", "process", "docker"] = "auto"
    user: str = Field(default=NEO4J_ADMIN_USER, max_length=128)
    password: str = Field(default="test-password", min_length=8, max_length=256)
    export: Annotated[
        dict[EnvName, str], AfterValidator(_placeholders_of(SERVICE_PLACEHOLDERS))
    ] = Field(default_factory=lambda: dict(DEFAULT_NEO4J_EXPORT), max_length=50)
    startup_timeout: Seconds = 180
    # None: a free port per run. A number: that port on 127.0.0.1, for suites that
    # hard-code localhost:7687; runs wanting the same port take turns.
    port: Port | None = None
    http_port: Port | None = None
    plugins: list[Neo4jPlugin] = Field(default=[], max_length=5)

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServiceConfig:
        if self.port is not None and self.port == self.http_port:
            raise ValueError(f"'port' and 'http_port' are both {self.port}")
        return self

    def fixed_ports(self) -> list[int]:
        """The host ports this service must have (and so holds while it runs)."""
        return [port for port in (self.port, self.http_port) if port is not None]


DEFAULT_LLM_EXPORT = {
    "OPENAI_BASE_URL": "{base_url}",
    "OPENAI_API_KEY": "{api_key}",
}


class LlmConfig(_Model):
    """The LLM gateway a test job's code is pointed at."""

    upstream: Url = "https://api.openai.com/v1"
    api_key_secret: BlockName | None = None
    # Directories in the repository: mock answers, recorded exchanges.
    fixtures: RepoPath | None = None
    recordings: RepoPath = ".cicd/llm-recordings"
    export: Annotated[dict[EnvName, str], AfterValidator(_placeholders_of(LLM_PLACEHOLDERS))] = (
        Field(default_factory=lambda: dict(DEFAULT_LLM_EXPORT), max_length=50)
    )
    strict_replay: bool = True


class BenchmarkConfig(_Model):
    paths: list[RepoPath] = Field(min_length=1, max_length=100)
    baseline: RepoPath = "benchmarks/baseline.json"
    threshold: float = Field(default=0.10, gt=0, le=100, allow_inf_nan=False)
    rounds: int = Field(default=5, ge=1, le=100)
    # Fresh rounds per side for the suspects of the first comparison (raised as
    # needed for Holm's correction: tasks/benchmark_stats.py).
    confirm_rounds: int = Field(default=7, ge=2, le=100)
    timeout: Seconds = 900


class NotifyConfig(_Model):
    webhook_url: Url | None = None
    block: SlugOrBlockName | None = None


class ReleaseConfig(_Model):
    index_url: Url | None = None
    repository_url: Url | None = None
    credentials_secret: BlockName | None = None
    username: str = Field(default="__token__", min_length=1, max_length=256)
    tag_prefix: Annotated[
        str, AfterValidator(_matching(r"[A-Za-z0-9._/-]{0,32}", "a tag prefix such as 'v'"))
    ] = "v"


# Where a run's statuses go (README "Statuses on the git host"). The git host's
# own rules: a GitHub owner/name, a GitLab project id or namespace path
# (https://docs.gitlab.com/api/rest/#namespaced-paths).
Repository = Annotated[
    str,
    Field(max_length=255),
    AfterValidator(
        _matching(
            r"\d{1,20}|[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100}){1,20}",
            "'owner/name' (GitHub), a project path 'group/name' or a numeric project id (GitLab)",
        )
    ),
]
ContextPrefix = Annotated[
    str,
    AfterValidator(_matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", "a prefix such as 'cicd'")),
]


class StatusesConfig(_Model):
    """Commit statuses back to the git host, per job and for the run."""

    provider: Literal["github", "gitlab"]
    # None: derived from the repository's https or ssh address.
    repository: Repository | None = None
    # None: https://api.github.com, or the GitLab host's /api/v4 (from the address).
    api_url: Url | None = None
    # The Prefect Secret block holding the token (never the token itself).
    token_block: BlockName
    context_prefix: ContextPrefix = "cicd"
    # The token is a GitHub App installation token: check runs, not statuses
    # (https://docs.github.com/en/rest/checks/runs: only GitHub Apps may create them).
    check_runs: bool = False

    @model_validator(mode="after")
    def _check_runs_on_github(self) -> StatusesConfig:
        if self.check_runs and self.provider != "github":
            raise ValueError(
                "field 'statuses.check_runs': check runs are GitHub's; "
                f"provider {self.provider!r} gets commit statuses"
            )
        return self


class PipelineSettings(_Model):
    """Per-flow choices: which suites run, LLM mode, budget, Python matrix."""

    suites: list[Name] | None = Field(default=None, min_length=1, max_length=100)
    llm_mode: LlmMode | None = None
    budget_usd: Usd | None = None
    alert_usd: Usd | None = None
    python: list[PythonVersion] = Field(default=[], max_length=20)


# The settings each pipeline reads: anything else set under pipelines.<flow>
# would be accepted and silently do nothing. alert_usd of the LLM pipelines is
# the per-run threshold of the cost report (tasks/cost_report.alert_thresholds).
FLOW_SETTINGS: dict[str, frozenset[str]] = {
    "pr-validation": frozenset({"suites", "llm_mode", "budget_usd", "alert_usd"}),
    "integration": frozenset({"suites", "llm_mode", "budget_usd", "alert_usd"}),
    "nightly": frozenset({"suites", "llm_mode", "budget_usd", "alert_usd", "python"}),
    "release": frozenset({"suites"}),
    "cost-report": frozenset({"alert_usd"}),
}


class PipelineConfig(_Model):
    version: Annotated[Literal[1], BeforeValidator(_no_bool)] = 1
    environment: EnvironmentConfig = EnvironmentConfig()
    quality: QualityConfig = QualityConfig()
    tests: dict[Name, SuiteConfig] = Field(default={}, max_length=100)
    services: dict[Name, ServiceConfig] = Field(default={}, max_length=10)
    llm: LlmConfig = LlmConfig()
    benchmarks: BenchmarkConfig | None = None
    notify: NotifyConfig = NotifyConfig()
    release: ReleaseConfig = ReleaseConfig()
    statuses: StatusesConfig | None = None
    pipelines: dict[PipelineName, PipelineSettings] = {}
    ignore_paths: list[IgnorePattern] = Field(default=[], max_length=1000)
    deploy: DeployConfig | None = None  # cicd/config_deploy.py (issue 12)

    @model_validator(mode="after")
    def _references_resolve(self) -> PipelineConfig:
        for name, declared in self.services.items():
            if declared.user != NEO4J_ADMIN_USER:
                raise ValueError(
                    f"field 'services.{name}.user': Neo4j 5 can only set the initial password "
                    f"of user {NEO4J_ADMIN_USER!r}, got {shown(declared.user)}"
                )
        for suite_name, suite in self.tests.items():
            exported_by: dict[str, str] = {}
            for service in suite.services:
                if service not in self.services:
                    raise ValueError(
                        f"field 'tests.{suite_name}.services': unknown service {service!r}; "
                        f"declared services: {sorted(self.services) or 'none'}"
                    )
                for variable in self.services[service].export:
                    if variable in exported_by and exported_by[variable] != service:
                        raise ValueError(
                            f"field 'services.{service}.export': {variable} is also exported by "
                            f"service {exported_by[variable]!r}, both used by suite {suite_name!r}"
                        )
                    exported_by[variable] = service
            claimed: dict[int, str] = {}
            for service in suite.services:
                for port in self.services[service].fixed_ports():
                    if port in claimed and claimed[port] != service:
                        raise ValueError(
                            f"field 'services.{service}.port': port {port} is also fixed by "
                            f"service {claimed[port]!r}, both used by suite {suite_name!r}"
                        )
                    claimed[port] = service
        for flow_name, settings in self.pipelines.items():
            unused = sorted(settings.model_fields_set - FLOW_SETTINGS[flow_name])
            if unused:
                raise ValueError(
                    f"field 'pipelines.{flow_name}.{unused[0]}': not used by the {flow_name} "
                    f"pipeline (it reads {', '.join(sorted(FLOW_SETTINGS[flow_name]))})"
                )
            for suite_ref in settings.suites or []:
                if suite_ref not in self.tests:
                    raise ValueError(
                        f"field 'pipelines.{flow_name}.suites': unknown suite {suite_ref!r}; "
                        f"declared suites: {sorted(self.tests) or 'none'}"
                    )
        return self

    def settings(self, flow: PipelineName) -> PipelineSettings:
        return self.pipelines.get(flow, PipelineSettings())
