"""The target project's virtualenv, built with uv and reused across runs.

An environment holds the target's *dependencies* (``pyproject.toml`` with its
extras and PEP 735 dependency groups, ``requirements*.txt``, extra packages;
``tasks.dependency_inputs`` reads the last two) and is keyed by the hash of
those inputs: while they are unchanged, every run reuses it. It is never
modified after it is marked ready, so concurrent runs can share it; the
commit under test is put on ``PYTHONPATH`` per run instead of being installed
into the shared environment (an editable install would point at a workspace
that is deleted when its run ends). With ``install_project`` the commit is
built and installed, without dependencies, into a directory beside its
workspace that lives and dies with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from packaging.requirements import Requirement
from prefect import task
from prefect.cache_policies import NO_CACHE

from cicd import command, paths
from cicd.config import EnvironmentConfig, PipelineConfig, SuiteConfig, read_pyproject
from cicd.errors import BadInput, CicdError, InfrastructureError, retry_on_infrastructure
from cicd.locking import file_lock
from tasks.dependency_inputs import (
    DependencyInputs,
    group_inputs,
    requirements_inputs,
    selected_groups,
)
from tasks.environment_check import prepare_rebuild, untrusted_reason

READY_MARKER = ".cicd-ready"
# Bump when the way environments are built changes, so old ones are not reused.
# 3: compiled to bytecode at install (COMPILE_BYTECODE).
LAYOUT_VERSION = "3"
# uv leaves ``.py`` files uncompiled (https://docs.astral.sh/uv/reference/cli/#uv-pip-install--compile-bytecode)
# and a job's interpreter cannot cache what it compiles (the environment is
# read-only in its box, PYTHONDONTWRITEBYTECODE is set): every run compiled
# pytest, pluggy and coverage again, 0.3 s of the sample's 1 s pytest step
# ("import pytest" 468 ms against 181 ms). pip compiles at install by default;
# so do we, once per environment. A .pyc is derived data Python itself checks
# against its source's size and mtime before using it.
COMPILE_BYTECODE = "--compile-bytecode"
# Variables of ours that must not leak into the target's processes.
_PRIVATE_PREFIXES = ("PREFECT_", "CICD_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "TWINE_")


class InterpreterMissing(BadInput):
    """No interpreter of the requested Python version is installed on this worker."""


class ProjectBuildFailed(CicdError):
    """The commit under test does not build: the pipeline fails, nothing is retried."""


@dataclass(frozen=True)
class Environment:
    path: Path
    python_version: str
    key: str
    reused: bool
    source_paths: tuple[Path, ...] = ()
    script_paths: tuple[Path, ...] = ()
    # Why a damaged environment was rebuilt this time (tasks.environment_check).
    rebuilt_because: str = ""
    # Planned on the cache's word (``planned_environment``): what makes it ready
    # (the check, the install) before anything runs in it; None once it is.
    ensure: Callable[[], Environment] | None = field(default=None, compare=False, repr=False)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def for_workspace(self, workspace: Path) -> Environment:
        """The same environment with ``workspace``'s code importable."""
        src = workspace / "src"
        root = src if src.is_dir() else workspace
        return replace(self, source_paths=(root,), script_paths=())

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment variables the target's commands run with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES)}
        env["VIRTUAL_ENV"] = str(self.path)
        bins = [str(p) for p in self.script_paths] + [str(self.path / "bin")]
        env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
        if self.source_paths:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.source_paths)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra or {})
        return env


def _dependency_files(workspace: Path) -> list[Path]:
    candidates = [workspace / "pyproject.toml", workspace / "setup.py", workspace / "setup.cfg"]
    candidates += sorted(workspace.glob("requirements*.txt"))
    return [p for p in candidates if p.is_file()]


def requirement_strings(config: EnvironmentConfig, packages: Iterable[str] = ()) -> list[str]:
    """``environment.packages`` and our tool packages as PEP 508 requirement strings, sorted.

    The config schema refused every entry that is not a requirement
    (``cicd.config_schema``); each is passed on as packaging re-prints it
    (https://packaging.pypa.io/en/stable/requirements.html), after ``--``, so
    that nothing can become an installer option (``--target=/elsewhere``,
    ``-e .``, ``-r file``) that writes or reads outside the workspace.
    """
    return sorted({str(Requirement(entry)) for entry in (*config.packages, *packages)})


def dependency_inputs(workspace: Path, config: EnvironmentConfig) -> DependencyInputs:
    """The groups and requirements files of ``workspace``, the project's own references
    turned into its extras (``tasks.dependency_inputs``)."""
    pyproject = read_pyproject(workspace)
    inputs = DependencyInputs(extras=set(config.extras))
    group_inputs(pyproject, selected_groups(config.groups, pyproject), inputs)
    requirements_inputs(workspace, inputs)
    return inputs


def environment_key(workspace: Path, config: EnvironmentConfig, packages: list[str]) -> str:
    """The hash of everything that decides what the environment contains."""
    inputs = dependency_inputs(workspace, config)
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "layout": LAYOUT_VERSION,
                "python": config.python,
                "extras": sorted(inputs.extras),
                "groups": inputs.requirements,
                "requirements_files": inputs.files,
                "packages": requirement_strings(config, packages),
                "platform": sys.platform,
            },
            sort_keys=True,
        ).encode()
    )
    for path in _dependency_files(workspace):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _install_argv(
    python: Path,
    workspace: Path,
    config: EnvironmentConfig,
    packages: list[str],
    requirements_dir: Path,
) -> list[str]:
    """uv's arguments; the translated requirements files are written to ``requirements_dir``."""
    inputs = dependency_inputs(workspace, config)
    argv = ["uv", "pip", "install", COMPILE_BYTECODE, "--python", str(python)]
    extras = sorted(inputs.extras)
    # The project's own metadata: uv reads pyproject.toml, setup.py and setup.cfg
    # (https://docs.astral.sh/uv/pip/packages/#installing-packages-from-files).
    sources = [workspace / name for name in ("pyproject.toml", "setup.py", "setup.cfg")]
    source = next((path for path in sources if path.is_file()), None)
    if source is not None and (source.name == "pyproject.toml" or extras):
        argv += ["-r", str(source)]
        for extra in extras:
            argv += ["--extra", extra]
    elif extras:
        raise BadInput(f"environment.extras {extras} needs a pyproject.toml in the target")
    for requirements in inputs.write(requirements_dir, workspace):
        argv += ["-r", str(requirements)]
    # Everything after "--" is a requirement, never an option (uv and pip both stop there).
    wanted = sorted({*inputs.requirements, *requirement_strings(config, packages)})
    return [*argv, "--", *wanted]


def _interpreter_version(python: Path) -> str | None:
    try:
        result = command.run(
            [str(python), "-c", "import platform; print(platform.python_version())"], timeout=30
        )
    except OSError:
        return None
    return result.output.strip() if result.ok else None


def find_interpreter(version: str) -> Path | None:
    """An installed interpreter of ``version`` (``3.12`` or ``3.12.1``), or None.

    Searched on PATH and in pyenv's versions directory. Every candidate is run:
    pyenv shims of versions that are installed but not selected exist on PATH
    and fail when called (uv's own discovery stops at the first such shim).
    """
    minor = ".".join(version.split(".")[:2])
    names = [f"python{minor}"]
    candidates = [
        Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep) if d for name in names
    ]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(
        (pyenv_root / "versions").glob(f"{minor}.*/bin/python{minor}"), reverse=True
    )
    # Last: our own interpreter (uv creates the venv from its base installation).
    candidates.append(Path(sys.executable))
    seen: set[Path] = set()
    for candidate in candidates:
        if candidate in seen or not os.access(candidate, os.X_OK) or candidate.is_dir():
            continue
        seen.add(candidate)
        found = _interpreter_version(candidate)
        if found is not None and (found == version or found.rsplit(".", 1)[0] == version):
            return candidate
    return None


def _uv() -> str:
    # uv is a dependency of cicd-flows; prefer the one next to our interpreter.
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else "uv"


def ensure_environment(
    workspace: Path,
    config: EnvironmentConfig,
    packages: list[str] | None = None,
    log_path: Path | None = None,
) -> Environment:
    """The environment for ``workspace``'s commit: dependencies shared, its code its own."""
    env = _dependencies_environment(workspace, config, packages or [], log_path)
    if config.install_project:
        return install_project(env, workspace, config.timeout, log_path)
    return env.for_workspace(workspace)


def _environment_path(config: EnvironmentConfig, key: str) -> Path:
    return paths.environments() / f"py{config.python}-{key[:16]}"


def planned_environment(
    workspace: Path,
    config: EnvironmentConfig,
    packages: list[str] | None = None,
    log_path: Path | None = None,
) -> Environment:
    """The environment ``ensure_environment`` would give, by its key alone: neither
    checked (``tasks.environment_check``) nor built.

    For a run whose every job is served from the cache, where nothing runs in
    it: a job's cache key holds the environment's key, never its files. A job
    that runs after all (its cached result could not be read) makes it ready
    first (:func:`ready`), once for all the run's jobs.
    """
    wanted = list(packages or [])
    key = environment_key(workspace, config, wanted)
    lock = threading.Lock()
    made: list[Environment] = []

    def ensure() -> Environment:
        with lock:
            if not made:
                made.append(ensure_environment(workspace, config, wanted, log_path))
            return made[0]

    planned = Environment(_environment_path(config, key), config.python, key, reused=True)
    return replace(planned.for_workspace(workspace), ensure=ensure)


JobT = TypeVar("JobT")


def ready(job: JobT) -> JobT:
    """``job`` with its environment made ready when it was planned on the cache's
    word (:func:`planned_environment`); any other job as it is."""
    env = getattr(job, "env", None)
    if not isinstance(env, Environment) or env.ensure is None or not is_dataclass(job):
        return job
    return cast(JobT, replace(cast(Any, job), env=env.ensure()))


def _dependencies_environment(
    workspace: Path, config: EnvironmentConfig, packages: list[str], log_path: Path | None
) -> Environment:
    """Reuse the environment for these dependency inputs, or build it."""
    key = environment_key(workspace, config, packages)
    path = _environment_path(config, key)
    if _trusted(path):
        return Environment(path, config.python, key, reused=True)
    with file_lock(path.with_name(path.name + ".lock")):
        damaged = untrusted_reason(path, READY_MARKER)
        if damaged is None and (path / READY_MARKER).is_file():
            return Environment(path, config.python, key, reused=True)
        install_env = prepare_rebuild(path, _uv(), log_path) if damaged else None
        # A half-built environment from a crashed run is never trusted.
        shutil.rmtree(path, ignore_errors=True)
        uv = _create_venv(path, config.python, config.timeout, log_path)
        with tempfile.TemporaryDirectory(dir=paths.home()) as requirements_dir:
            argv = _install_argv(
                path / "bin" / "python", workspace, config, packages, Path(requirements_dir)
            )
            argv[0] = uv
            installed = command.run(
                argv, cwd=workspace, env=install_env, timeout=config.timeout, log_path=log_path
            )
        if not installed.ok:
            shutil.rmtree(path, ignore_errors=True)
            raise InfrastructureError(f"installing the dependencies failed: {installed.tail(15)}")
        (path / READY_MARKER).write_text(key + "\n")
    return Environment(path, config.python, key, reused=False, rebuilt_because=damaged or "")


def _trusted(path: Path) -> bool:
    """Ready and intact (``tasks.environment_check``): reusable without the lock."""
    return (path / READY_MARKER).is_file() and untrusted_reason(path, READY_MARKER) is None


def _create_venv(path: Path, python: str, timeout: float, log_path: Path | None) -> str:
    """An empty virtualenv of ``python`` at ``path``; returns the uv that made it."""
    interpreter = find_interpreter(python)
    if interpreter is None:
        raise InterpreterMissing(f"Python {python} is not installed on this worker")
    uv = _uv()
    created = command.run(
        [
            uv,
            "venv",
            "--quiet",
            "--python",
            str(interpreter),
            "--python-preference",
            "only-system",
            str(path),
        ],
        timeout=timeout,
        log_path=log_path,
    )
    if not created.ok:
        shutil.rmtree(path, ignore_errors=True)
        raise InfrastructureError(f"creating the environment failed: {created.tail(10)}")
    return uv


def tool_environment(
    python: str, requirements: list[str], timeout: float, log_path: Path | None = None
) -> Environment:
    """The quality tools at the project's pins, apart from its test environment.

    Keyed by the requirements alone (as pre-commit keys a hook's environment by
    its repository, rev and additional_dependencies), so every commit with the
    same pins reuses it, whatever its other dependencies.
    """
    wanted = sorted({str(Requirement(entry)) for entry in requirements})
    payload = {"layout": LAYOUT_VERSION, "python": python, "tools": wanted}
    payload["platform"] = sys.platform
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    path = paths.environments() / f"tools-py{python}-{key[:16]}"
    if _trusted(path):
        return Environment(path, python, key, reused=True)
    with file_lock(path.with_name(path.name + ".lock")):
        damaged = untrusted_reason(path, READY_MARKER)
        if damaged is None and (path / READY_MARKER).is_file():
            return Environment(path, python, key, reused=True)
        install_env = prepare_rebuild(path, _uv(), log_path) if damaged else None
        shutil.rmtree(path, ignore_errors=True)
        uv = _create_venv(path, python, timeout, log_path)
        argv = [uv, "pip", "install", COMPILE_BYTECODE, "--python", str(path / "bin" / "python")]
        argv += ["--", *wanted]
        installed = command.run(argv, env=install_env, timeout=timeout, log_path=log_path)
        if not installed.ok:
            shutil.rmtree(path, ignore_errors=True)
            raise InfrastructureError(f"installing the quality tools failed: {installed.tail(15)}")
        if any(Requirement(entry).name == "pyright" for entry in wanted):
            # Older pyright-python releases fetch pyright from npm at first use:
            # here, not in the job's box, which has no network.
            warmed = command.run(
                [str(path / "bin" / "python"), "-m", "pyright", "--version"],
                env={**os.environ, **pyright_environ(path)},
                timeout=timeout,
                log_path=log_path,
            )
            if not warmed.ok:
                shutil.rmtree(path, ignore_errors=True)
                raise InfrastructureError(f"installing pyright failed: {warmed.tail(15)}")
        (path / READY_MARKER).write_text(key + "\n")
    return Environment(path, python, key, reused=False, rebuilt_because=damaged or "")


def pyright_environ(tools: Path) -> dict[str, str]:
    """pyright-python's cache inside the tool environment, and no update check (it
    asks PyPI for the newest version; the job's box has no network)."""
    cache = str(tools / "pyright-cache")
    return {"PYRIGHT_PYTHON_CACHE_DIR": cache, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}


def installed_versions(env: Environment, names: Iterable[str]) -> dict[str, str]:
    """The versions of ``names`` installed in ``env``, from their ``.dist-info`` names
    (https://packaging.python.org/en/latest/specifications/recording-installed-packages/)."""
    wanted = {name.replace("-", "_").lower(): name for name in names}
    found: dict[str, str] = {}
    for info in env.path.glob("lib/python*/site-packages/*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        if name.lower() in wanted:
            found[wanted[name.lower()]] = version
    return dict(sorted(found.items()))


def project_site(workspace: Path, python_version: str) -> Path:
    """Where ``install_project`` puts the built commit: beside the workspace.

    Not inside it: the target's own tools (ruff, mypy, black over ``.``) would
    check the installed copy too.
    """
    return workspace.with_name(f"{workspace.name}.site-py{python_version}")


def install_project(
    env: Environment, workspace: Path, timeout: float, log_path: Path | None = None
) -> Environment:
    """Build the commit and install it, without dependencies, for this run only.

    Not an editable install: its ``.pth`` hook is only read from site-packages,
    and the shared environment's site-packages is not this run's to change.
    """
    site = project_site(workspace, env.python_version)
    shutil.rmtree(site, ignore_errors=True)
    argv = [_uv(), "pip", "install", "--quiet", "--no-deps", "--python", str(env.python)]
    argv += ["--target", str(site), str(workspace)]
    installed = command.run(argv, cwd=workspace, timeout=timeout, log_path=log_path)
    if not installed.ok:
        shutil.rmtree(site, ignore_errors=True)
        raise ProjectBuildFailed(
            f"building and installing the project failed: {installed.tail(15)}"
        )
    # The checkout stays first on the path, as with `pip install -e .`: modules
    # import from its files (coverage measures those), while the build adds the
    # distribution's metadata and entry points.
    checkout = env.for_workspace(workspace)
    return replace(
        checkout, source_paths=(*checkout.source_paths, site), script_paths=(site / "bin",)
    )


@task(
    name="environment",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_infrastructure,
    # Its paths are in the attempt's workspace: never served to a rescheduled
    # attempt of the same flow run (see tasks/checkout.py). The reusable
    # environment itself is found again by its key (ensure_environment).
    cache_policy=NO_CACHE,
)
def environment_task(
    workspace: Path, config: EnvironmentConfig, packages: list[str], log_path: Path | None = None
) -> Environment:
    env = ensure_environment(workspace, config, packages, log_path)
    if env.rebuilt_because:
        from prefect import get_run_logger

        get_run_logger().warning("environment rebuilt: %s", env.rebuilt_because)
    return env


def tool_packages(config: PipelineConfig, suites: Iterable[SuiteConfig] = ()) -> list[str]:
    """What cicd-flows itself needs in the target's environment to run the jobs."""
    suites = list(suites) or list(config.tests.values())
    # The quality tools have an environment of their own (tool_environment).
    packages: list[str] = []
    if any(suite.runner == "pytest" for suite in suites):
        packages.append("pytest")
    if any(suite.coverage for suite in suites):
        # `coverage run -m pytest` (tasks/coverage_run.py), not pytest-cov;
        # a unittest suite needs nothing else (tasks/unittest_junit.py).
        packages.append("coverage")
    if config.benchmarks is not None:
        packages.append("pytest-benchmark")
    return packages
