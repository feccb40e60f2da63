"""Every pipeline, registered once: its name, where its flow lives and the
command-line options that become its parameters.

In the spirit of nox's ``registry.py`` (one mapping of names to sessions that
the command line reads, https://github.com/wntrblm/nox/blob/main/nox/registry.py):
``cicd run``'s choices, options and dispatch all come from here, so adding a
pipeline is one entry, not an edit of several if-chains. The flow is named by
its import path and imported only when it runs: importing a flow imports
Prefect, and ``cicd --help`` must not (Prefect reads its settings at import,
so the CLI sets them first).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LLM_MODES = ("mock", "replay", "record", "live")


@dataclass(frozen=True)
class Option:
    """One command-line option that becomes one flow parameter.

    ``flag`` is the option (``--llm-mode``), ``parameter`` the flow's parameter
    name (the same as in prefect.yaml). ``switch`` options take no value and are
    always passed (False when absent); other options are passed only when given,
    so the flow's own default applies otherwise.
    """

    flag: str
    parameter: str
    help: str
    choices: tuple[str, ...] | None = None
    switch: bool = False
    # Passed even when not given (as None): the flow takes it explicitly.
    always: bool = False


@dataclass(frozen=True)
class Pipeline:
    name: str
    # "module:function" of the Prefect flow.
    flow_path: str
    help: str
    # Runs on a repository: --repo (default: the embedded sample) and --ref.
    takes_repo: bool = True
    ref_help: str = "branch, tag or commit to run on"
    options: tuple[Option, ...] = field(default_factory=tuple)

    def load(self) -> Callable[..., Any]:
        """The flow function (imports its module, and with it Prefect)."""
        module_name, _, attribute = self.flow_path.partition(":")
        flow: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
        return flow

    def parameters(self, values: Mapping[str, Any], repo: str | None) -> dict[str, Any]:
        """The flow's keyword arguments from parsed option values (keyed by parameter)."""
        params: dict[str, Any] = {}
        if self.takes_repo:
            params["repo"] = repo
            params["ref"] = values["ref"]
        for option in self.options:
            value = values.get(option.parameter)
            if option.switch:
                params[option.parameter] = bool(value)
            elif value is not None or option.always:
                params[option.parameter] = value
        return params


BASE = Option("--base", "base", "base ref of the change, for change detection", always=True)


def _llm_mode(pipeline: str) -> Option:
    return Option(
        "--llm-mode",
        "llm_mode",
        f"{pipeline}: how the LLM gateway answers (default: from cicd.yaml)",
        choices=LLM_MODES,
    )


PIPELINES: dict[str, Pipeline] = {}


def register(pipeline: Pipeline) -> Pipeline:
    if pipeline.name in PIPELINES:
        raise ValueError(f"pipeline {pipeline.name!r} is registered twice")
    PIPELINES[pipeline.name] = pipeline
    return pipeline


register(
    Pipeline(
        "pr-validation",
        "flows.pr_validation:pr_validation",
        "quality, unit and framework tests of a change (pr.yml)",
        options=(
            BASE,
            Option(
                "--untrusted",
                "untrusted",
                "a change from a fork: no secret reaches it (LLM suites use the mock)",
                switch=True,
            ),
        ),
    )
)
register(
    Pipeline(
        "integration",
        "flows.integration:integration",
        "agent tests with services and the LLM gateway, budget, performance (integration.yml)",
        options=(BASE, _llm_mode("integration")),
    )
)
register(
    Pipeline(
        "nightly",
        "flows.nightly:nightly",
        "full suite, Python matrix, LLM costs, notification (nightly.yml)",
        options=(_llm_mode("nightly"),),
    )
)
register(
    Pipeline(
        "release",
        "flows.release:release",
        "tag == version, tests, build, check, publish, changelog (release.yml)",
        ref_help="the tag to release",
        options=(
            Option("--dry-run", "dry_run", "do everything but upload", switch=True),
            Option("--repository-url", "repository_url", "the index upload URL"),
        ),
    )
)
register(
    Pipeline(
        "cost-report",
        "flows.cost_report:cost_report",
        "weekly LLM spend, trend and alerts (cost-alert.yml)",
        takes_repo=False,
        options=(Option("--webhook-url", "webhook_url", "where to send the summary"),),
    )
)
register(
    Pipeline(
        "deploy",
        "flows.deploy:deploy",
        "build once, staging then production by strategy, gates, rollback (issue 12)",
        options=(
            Option("--env", "env", "deploy to this environment only (default: all, in order)"),
            Option(
                "--artifact",
                "artifact",
                "deploy this wheel file, or NAME==VERSION from the index, instead of a build",
            ),
        ),
    )
)


def pipeline(name: str) -> Pipeline:
    return PIPELINES[name]
