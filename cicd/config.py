"""The target project's pipeline configuration: ``cicd.yaml`` at the repo root.

Read from the commit under test (the checked-out workspace), validated with
pydantic, and reported with the file, the field and what was expected. With
no file, defaults are detected from the target's ``pyproject.toml``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cicd.errors import ConfigError

CONFIG_FILE = "cicd.yaml"

LlmMode = Literal["mock", "replay", "record", "live"]
PipelineName = Literal["pr-validation", "integration", "nightly", "release", "cost-report"]

_PLACEHOLDER = re.compile(r"{(\w+)}")


class _Model(BaseModel):
    # A typo in a field name must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class EnvironmentConfig(_Model):
    """How the target's virtualenv is built (``pip install -e .[extras]`` and more)."""

    python: str = Field(default_factory=_current_python, pattern=r"^\d+\.\d+(\.\d+)?$")
    extras: list[str] = []
    packages: list[str] = []
    # Off: the commit's source is put on PYTHONPATH (no build, the fastest).
    # On: the commit is also built and installed without dependencies for each
    # run, like `pip install -e .`: its entry points and metadata exist too.
    install_project: bool = False
    timeout: float = Field(default=900, gt=0)


class ToolConfig(_Model):
    paths: list[str] = Field(min_length=1)
    args: list[str] = []


class QualityConfig(_Model):
    ruff: ToolConfig | None = None
    mypy: ToolConfig | None = None
    black: ToolConfig | None = None
    timeout: float = Field(default=600, gt=0)

    def tools(self) -> dict[str, ToolConfig]:
        found = {"ruff": self.ruff, "mypy": self.mypy, "black": self.black}
        return {name: tool for name, tool in found.items() if tool is not None}


class SuiteConfig(_Model):
    """One pytest suite, like a GitHub Actions test job."""

    paths: list[str] = Field(min_length=1)
    markers: str | None = None
    args: list[str] = []
    coverage: list[str] = []
    services: list[str] = []
    llm: bool = False
    env: dict[str, str] = {}
    timeout: float = Field(default=900, gt=0)


DEFAULT_NEO4J_EXPORT = {
    "NEO4J_URI": "{uri}",
    "NEO4J_USER": "{user}",
    "NEO4J_PASSWORD": "{password}",
    "NEO4J_TEST_URI": "{uri}",
    "NEO4J_TEST_PASSWORD": "{password}",
}
SERVICE_PLACEHOLDERS = frozenset({"uri", "user", "password", "host", "port", "http_port"})


class ServiceConfig(_Model):
    """A service container, like ``services: neo4j: image: neo4j:5.26``."""

    kind: Literal["neo4j"] = "neo4j"
    version: str = "5.26"
    backend: Literal["auto", "process", "docker"] = "auto"
    user: str = "neo4j"
    password: str = Field(default="test-password", min_length=8)
    export: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_NEO4J_EXPORT))
    startup_timeout: float = Field(default=180, gt=0)

    @field_validator("version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value != "5.26" and not value.startswith("5.26."):
            raise ValueError(f"only Neo4j 5.26 is supported, got {value!r}")
        return value

    @field_validator("export")
    @classmethod
    def _known_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            unknown = set(_PLACEHOLDER.findall(template)) - SERVICE_PLACEHOLDERS
            if unknown:
                raise ValueError(
                    f"{name}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                    f"expected one of {sorted(SERVICE_PLACEHOLDERS)}"
                )
        return value


DEFAULT_LLM_EXPORT = {
    "OPENAI_BASE_URL": "{base_url}",
    "OPENAI_API_KEY": "{api_key}",
}


class LlmConfig(_Model):
    """The LLM gateway a test job's code is pointed at."""

    upstream: str = "https://api.openai.com/v1"
    api_key_secret: str | None = None
    fixtures: str | None = None
    recordings: str = ".cicd/llm-recordings"
    export: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LLM_EXPORT))
    strict_replay: bool = True


class BenchmarkConfig(_Model):
    paths: list[str] = Field(min_length=1)
    baseline: str = "benchmarks/baseline.json"
    threshold: float = Field(default=0.10, gt=0)
    rounds: int = Field(default=5, ge=1)
    timeout: float = Field(default=900, gt=0)


class NotifyConfig(_Model):
    webhook_url: str | None = None
    block: str | None = None


class ReleaseConfig(_Model):
    index_url: str | None = None
    repository_url: str | None = None
    credentials_secret: str | None = None
    username: str = "__token__"
    tag_prefix: str = "v"


class PipelineSettings(_Model):
    """Per-flow choices: which suites run, LLM mode, budget, Python matrix."""

    suites: list[str] | None = None
    llm_mode: LlmMode | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    alert_usd: float | None = Field(default=None, ge=0)
    python: list[str] = []


class PipelineConfig(_Model):
    version: Literal[1] = 1
    environment: EnvironmentConfig = EnvironmentConfig()
    quality: QualityConfig = QualityConfig()
    tests: dict[str, SuiteConfig] = {}
    services: dict[str, ServiceConfig] = {}
    llm: LlmConfig = LlmConfig()
    benchmarks: BenchmarkConfig | None = None
    notify: NotifyConfig = NotifyConfig()
    release: ReleaseConfig = ReleaseConfig()
    pipelines: dict[PipelineName, PipelineSettings] = {}
    ignore_paths: list[str] = []

    @model_validator(mode="after")
    def _references_resolve(self) -> PipelineConfig:
        for suite_name, suite in self.tests.items():
            for service in suite.services:
                if service not in self.services:
                    raise ValueError(
                        f"tests.{suite_name}.services: unknown service {service!r}; "
                        f"declared services: {sorted(self.services) or 'none'}"
                    )
        for flow_name, settings in self.pipelines.items():
            for suite_ref in settings.suites or []:
                if suite_ref not in self.tests:
                    raise ValueError(
                        f"pipelines.{flow_name}.suites: unknown suite {suite_ref!r}; "
                        f"declared suites: {sorted(self.tests) or 'none'}"
                    )
        return self

    def settings(self, flow: PipelineName) -> PipelineSettings:
        return self.pipelines.get(flow, PipelineSettings())


def _format_error(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"field '{location}': unknown field"
    if error["type"] == "value_error" and not location:
        return message.removeprefix("Value error, ")
    shown = error.get("input")
    got = "" if isinstance(shown, dict) or error["type"] == "value_error" else f" (got {shown!r})"
    return f"field '{location}': {message.removeprefix('Value error, ')}{got}"


def load_yaml(text: str, source: str, kind: str = "YAML") -> Any:
    """Parse YAML; a syntax error names ``source`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(
            source, [f"{where}not valid {kind} ({getattr(exc, 'problem', exc)})"]
        ) from None


def parse_config(text: str, source: str = CONFIG_FILE) -> PipelineConfig:
    """Validate the text of a ``cicd.yaml``; errors name ``source`` and the field."""
    data = load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"expected a mapping at the top level, got {type(data).__name__}"]
        )
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_format_error(e) for e in exc.errors()]) from None


def _read_pyproject(root: Path) -> dict[str, Any]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("pyproject.toml", [f"not valid TOML ({exc})"]) from None


def _package_dirs(root: Path) -> list[str]:
    """Where the target's import packages live: ``src/<pkg>`` or ``<pkg>`` at the root."""
    src = root / "src"
    base = src if src.is_dir() else root
    found = (
        [
            p
            for p in sorted(base.iterdir())
            if p.is_dir() and (p / "__init__.py").is_file() and p.name not in {"tests", "test"}
        ]
        if base.is_dir()
        else []
    )
    return [str(p.relative_to(root)) for p in found]


def detect_defaults(root: Path) -> PipelineConfig:
    """Sensible defaults for a target without ``cicd.yaml``, from ``pyproject.toml``."""
    pyproject = _read_pyproject(root)
    tool = pyproject.get("tool", {})
    optional = pyproject.get("project", {}).get("optional-dependencies", {})
    extras = [name for name in ("dev", "test", "tests") if name in optional][:1]
    packages = _package_dirs(root)
    code_paths = ["src"] if (root / "src").is_dir() else packages
    has_tests = (root / "tests").is_dir()
    lint_paths = code_paths + (["tests"] if has_tests else [])

    quality: dict[str, Any] = {}
    if "ruff" in tool and lint_paths:
        quality["ruff"] = {"paths": lint_paths}
    if "mypy" in tool and packages:
        quality["mypy"] = {"paths": packages}
    if "black" in tool and lint_paths:
        quality["black"] = {"paths": lint_paths}
    tests: dict[str, Any] = {}
    if has_tests:
        tests["unit"] = {"paths": ["tests"], "coverage": packages}
    return PipelineConfig.model_validate(
        {"environment": {"extras": extras}, "quality": quality, "tests": tests}
    )


def load_config(root: Path) -> PipelineConfig:
    """The configuration of the checked-out commit at ``root``."""
    path = root / CONFIG_FILE
    if path.is_file():
        return parse_config(path.read_text(encoding="utf-8"), CONFIG_FILE)
    return detect_defaults(root)


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders (used for the env names a service exports)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
