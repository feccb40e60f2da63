"""Quality checks as the project runs them: ruff check, ruff format --check, mypy,
black --check, isort --check-only, flake8.

Each tool runs at the version the project pins (``cicd.quality_detection``:
its pre-commit hook's ``rev``, else a pin in its dev dependencies), from an
environment of the tools alone that is keyed by those pins
(``tasks.environments.tool_environment``), with the project's own
configuration and no path argument unless cicd.yaml gives one. mypy runs with
the interpreter of the project's environment, so it sees the project's
dependencies, and imports itself (and its ``additional_dependencies``) from the
tool environment.

All configured tools run even when an earlier one fails, so one run shows
every problem (a GitHub Actions job would stop at the first failing step).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from cicd import command, paths
from cicd.config import QualityConfig, ToolConfig, read_pyproject
from cicd.locking import file_lock
from cicd.quality_detection import PRE_COMMIT_CONFIG, TOOL_PACKAGES, tool_requirements
from cicd.results import JobResult, StepResult
from tasks import progress, tool_caches
from tasks.environments import (
    READY_MARKER,
    Environment,
    installed_versions,
    pyright_environ,
    tool_environment,
)
from tasks.job import JobContext, JobInputs, failure_reason, run_step, state_of
from tasks.tool_caches import ToolCaches

JOB_NAME = "quality"
# What each tool runs, before cicd.yaml's args; tools that need a path get ".",
# as the projects' own CI runs them (`black --check .`).
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "ruff": (["ruff", "check"], False),
    "ruff_format": (["ruff", "format", "--check"], False),
    "mypy": (["mypy"], False),
    "black": (["black", "--check", "--diff"], True),
    "isort": (["isort", "--check-only", "--diff"], True),
    "flake8": (["flake8"], False),
    "pyright": (["pyright"], False),
}
# Tools that must see the project's dependencies: run with its interpreter.
TYPE_CHECKERS = frozenset({"mypy", "pyright"})


def tool_argv(tool: str, python: Path, config: ToolConfig) -> list[str]:
    module, *command = COMMANDS[tool][0]
    paths = config.paths or (["."] if COMMANDS[tool][1] else [])
    return [str(python), "-m", module, *command, *config.args, *(["--", *paths] if paths else [])]


def _site_packages(env: Environment) -> list[Path]:
    return sorted(env.path.glob("lib/python*/site-packages"))


@dataclass(frozen=True)
class QualityJob:
    """Every configured tool over the workspace, at the project's pins."""

    config: QualityConfig
    env: Environment
    # The commit's fingerprint when a pass may be reused; None runs afresh.
    source: str | None = None
    name: str = JOB_NAME
    # The tool environment's requirements (the pins); empty: the tool names.
    tools: tuple[str, ...] = ()
    # Whose tool caches (mypy's) the job starts from; None: every run cold.
    # Not an input: a cache never changes a verdict (tasks/tool_caches.py).
    caches: ToolCaches | None = None

    kind: ClassVar[str] = "quality"
    version: ClassVar[str] = "2"

    @property
    def timeout(self) -> float:
        return self.config.timeout

    def inputs(self) -> JobInputs:
        return JobInputs(
            self.source, config=self.config, environment=self.env.key, extra=list(self.tools)
        )

    def run(self, context: JobContext) -> JobResult:
        started = time.monotonic()
        packages = sorted({TOOL_PACKAGES[tool] for tool in _tool_names(self.config)})
        tools = tool_environment(
            self.env.python_version,
            list(self.tools) or packages,
            self.config.timeout,
            context.log(self.name),
        )
        # The linters run from the tool environment, the commit's code importable.
        linting = replace(tools, source_paths=self.env.source_paths)
        # mypy: the project's interpreter (its dependencies), mypy from the tools.
        typing = replace(self.env, source_paths=(*self.env.source_paths, *_site_packages(tools)))
        # pre-commit's hooks instead of the tools (cicd.yaml allows one or the other).
        if self.config.pre_commit:
            steps = pre_commit_steps(context, linting)
        else:
            steps = self._tools_side_by_side(context, linting, typing, tools.path)
        state = state_of(steps)
        return JobResult(
            name=self.name,
            state=state,
            # Wall time: the tools run side by side.
            duration=time.monotonic() - started,
            steps=tuple(steps),
            reason="" if state.ok else failure_reason(steps, context.deadline),
            # What ran, as run: the versions and commands a user compares with their CI.
            details={
                "versions": installed_versions(tools, packages),
                "commands": {step.name: step.command for step in steps},
            },
        )

    def _tools_side_by_side(
        self, context: JobContext, linting: Environment, typing: Environment, tools: Path
    ) -> list[StepResult]:
        """Every tool at once, each in a thread of its own, reported in cicd.yaml's
        order. They read the tree and write only their caches; one after another
        the quality job was the pipeline's longest (mypy 1.3 s, black 0.6 s beside
        pytest's 1.3 s on the sample). Each writes its output to a log of its own,
        appended to the job's log in order once all have ended, so the log reads
        as if they had run one after another."""
        log = context.log(self.name)
        parts = log.with_name(f"{self.name}.parts")
        work: list[Callable[[], StepResult]] = []
        for index, (tool, config) in enumerate(self.config.tools().items()):
            env = typing if tool in TYPE_CHECKERS else linting
            environ = env.environ(
                {**pyright_environ(tools), **tool_caches.cache_environ(tool, context.workspace)}
            )
            environ = {**_shared_cores(tool, config.args), **environ}
            work.append(
                functools.partial(
                    self._tool_step,
                    context,
                    tool,
                    tool_argv(tool, env.python, config),
                    environ,
                    parts / f"{index:02d}-{tool}.log",
                )
            )
        try:
            return run_side_by_side(work)
        finally:
            with log.open("a", encoding="utf-8") as whole:
                for part in sorted(parts.glob("*.log")):
                    whole.write(part.read_text(encoding="utf-8", errors="replace"))
            shutil.rmtree(parts, ignore_errors=True)

    def _tool_step(
        self,
        context: JobContext,
        tool: str,
        argv: list[str],
        environ: dict[str, str],
        log_path: Path,
    ) -> StepResult:
        """One tool's step, its cache seeded before and published after it."""
        store = None
        if self.caches is not None and tool in tool_caches.CACHED_TOOLS:
            key = [*self.tools, self.env.key]
            store = tool_caches.store_of(self.caches, tool, key)
            tool_caches.seed(store, tool_caches.workspace_cache(tool, context.workspace))
        step = run_step(
            tool,
            argv,
            cwd=context.workspace,
            env=environ,
            deadline=context.deadline,
            log_path=log_path,
            job=self.name,
        )
        # Passed or failed, the cache is whole; a tool stopped half-way is not.
        whole = not step.timed_out and step.returncode >= 0
        if store is not None and self.caches is not None and self.caches.publish and whole:
            tool_caches.publish(tool_caches.workspace_cache(tool, context.workspace), store)
        return step


def _shared_cores(tool: str, args: Sequence[str]) -> dict[str, str]:
    """black's workers, unless the project or the worker chose them: half the
    cores, the tools run side by side and beside the test jobs. black starts a
    process per core by default
    (https://black.readthedocs.io/en/stable/usage_and_configuration/the_basics.html#w-workers),
    which on 2 cores took the test job's core: on the sample, 15 files, one
    worker checked them in 582 ms against 753 ms with two, even alone."""
    chosen = any(arg in ("-W", "--workers") or arg.startswith(("-W", "--workers=")) for arg in args)
    if tool != "black" or chosen:
        return {}
    return {"BLACK_NUM_WORKERS": str(max(1, (os.cpu_count() or 1) // 2))}


def run_side_by_side(work: Sequence[Callable[[], StepResult]]) -> list[StepResult]:
    """Each callable in a thread of its own, in this thread's context (the Prefect
    task run its logs belong to) and job (``tasks.progress``); their results in
    order. Every one is awaited before an exception of one is raised (a run being
    torn down stops them all)."""
    if len(work) <= 1:
        return [step() for step in work]
    job = progress.current_job()

    def in_context(step: Callable[[], StepResult]) -> Callable[[], StepResult]:
        context = contextvars.copy_context()

        def call() -> StepResult:
            with progress.acting_for(job):
                return context.run(step)

        return call

    with concurrent.futures.ThreadPoolExecutor(len(work), thread_name_prefix="quality") as pool:
        futures = [pool.submit(in_context(step)) for step in work]
        concurrent.futures.wait(futures)
    return [future.result() for future in futures]


def hook_store(workspace: Path, python: str) -> Path:
    """pre-commit's store for this hook configuration, under ``$CICD_HOME/envs``:
    reused while ``.pre-commit-config.yaml`` is unchanged, never shared with another."""
    digest = hashlib.sha256(python.encode() + b"\0" + (workspace / PRE_COMMIT_CONFIG).read_bytes())
    return paths.environments() / f"pre-commit-py{python}-{digest.hexdigest()[:16]}"


def pre_commit_steps(context: JobContext, tools: Environment) -> list[StepResult]:
    """``pre-commit install-hooks`` outside the box (it fetches the hooks), then
    ``pre-commit run --all-files`` inside it, the store read-only."""
    store = hook_store(context.workspace, tools.python_version)
    environ = tools.environ({"PRE_COMMIT_HOME": str(store)})
    pre_commit = [str(tools.python), "-m", "pre_commit"]
    with file_lock(store.with_name(store.name + ".lock")):
        if not (store / READY_MARKER).is_file():
            shutil.rmtree(store, ignore_errors=True)
            installed = command.run(
                [*pre_commit, "install-hooks"],
                cwd=context.workspace,
                env=environ,
                timeout=context.deadline.remaining(),
                log_path=context.log(JOB_NAME),
            )
            if not installed.ok:
                shutil.rmtree(store, ignore_errors=True)
                step = StepResult(
                    "pre-commit install-hooks",
                    " ".join([*pre_commit, "install-hooks"]),
                    installed.returncode,
                    installed.duration,
                    timed_out=installed.timed_out,
                    output_tail=installed.tail(40),
                )
                return [step]
            (store / READY_MARKER).write_text("\n")
    argv = [*pre_commit, "run", "--all-files", "--show-diff-on-failure", "--color", "never"]
    step = run_step(
        "pre-commit",
        argv,
        cwd=context.workspace,
        env=environ,
        deadline=context.deadline,
        log_path=context.log(JOB_NAME),
    )
    return [step]


def _tool_names(config: QualityConfig) -> list[str]:
    return ["pre_commit"] if config.pre_commit else list(config.tools())


def quality_jobs(
    config: QualityConfig,
    env: Environment,
    source: str | None,
    workspace: Path | None = None,
    caches: ToolCaches | None = None,
) -> list[QualityJob]:
    """The quality job, or none when no tool is configured; the pins read from
    ``workspace``'s pre-commit config and dependencies."""
    if not _tool_names(config):
        return []
    pins: tuple[str, ...] = ()
    if workspace is not None:
        pins = tuple(tool_requirements(workspace, read_pyproject(workspace), _tool_names(config)))
    return [QualityJob(config, env, source, tools=pins, caches=caches)]
