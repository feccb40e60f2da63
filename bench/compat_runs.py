"""Run a public project's own test command and ``cicd run pr-validation`` side by side.

Prints the figures of docs/compatibility.md for one project: tests passed, failed and
skipped, coverage and wall time (median of ``--runs``), once for the project's own CI
command in a fresh uv virtualenv and once through the pipeline (the cold first run on a
fresh ``CICD_HOME`` and the cached reruns reported apart). ``--broken-ref`` runs the
pipeline twice on a commit that breaks a test: both runs must exit 1 naming it.

Example (tomli, whose CI runs ``coverage run -m unittest`` then ``coverage report``)::

    .venv/bin/python bench/compat_runs.py /work/compat/tomli \
        --install . --install coverage \
        --direct "coverage run -m unittest" --direct "coverage report" \
        --broken-ref compat-broken

Commands are split with :func:`shlex.split` and run as argument lists, never by a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
DEFAULT_CICD = HERE / ".venv" / "bin" / "cicd"
DEFAULT_UV = HERE / ".venv" / "bin" / "uv"

# pytest's last line ("=== 12 passed, 1 skipped in 0.5s ===", no "=" under -q) and unittest's
# ("Ran 16 tests" ... "OK (skipped=2)" / "FAILED (failures=1, errors=1)").
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
PYTEST_SUMMARY = re.compile(
    r"^(?:=+ )?\d+ .*\b(passed|failed|skipped|errors?)\b.* in [\d.]+s\b.*$", re.M
)
UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in", re.M)
UNITTEST_END = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.M)
COVERAGE_TOTAL = re.compile(r"^TOTAL\s.*?(\d+(?:\.\d+)?)%\s*$", re.M)


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    # pytest's "N errors" (fixtures, collection) and unittest's errors=N, apart from failures.
    errors: int = 0
    coverage_percent: float | None = None


@dataclass
class DirectFigures:
    installed: list[str]
    commands: list[list[str]]
    setup_seconds: float
    exit_codes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    # Every run's counts (``counts`` is the last one's): a run can differ from the next.
    per_run: list[Counts] = field(default_factory=list)


@dataclass
class PipelineRun:
    exit_code: int
    seconds: float
    state: str
    jobs: list[dict[str, Any]]


def parse_counts(output: str) -> Counts:
    """Counts from pytest's or unittest's summary and coverage's TOTAL line."""
    counts = Counts()
    summaries = PYTEST_SUMMARY.findall(output)
    if summaries:
        last = [line for line in output.splitlines() if PYTEST_SUMMARY.match(line)][-1]
        for number, kind in PYTEST_COUNT.findall(last):
            if kind == "passed":
                counts.passed += int(number)
            elif kind == "failed":
                counts.failed += int(number)
            elif kind in {"error", "errors"}:
                counts.errors += int(number)
            elif kind in {"skipped", "xfailed"}:
                counts.skipped += int(number)
            elif kind == "xpassed":
                counts.passed += int(number)
    ran = UNITTEST_RAN.findall(output)
    ends = UNITTEST_END.findall(output)
    if ran and ends:
        total = int(ran[-1])
        details = dict(
            (key.strip(), int(value))
            for key, value in (part.split("=") for part in ends[-1][1].split(",") if "=" in part)
        )
        counts.failed = details.get("failures", 0)
        counts.errors = details.get("errors", 0)
        counts.skipped = details.get("skipped", 0) + details.get("expected failures", 0)
        counts.passed = total - counts.failed - counts.errors - counts.skipped
    totals = COVERAGE_TOTAL.findall(output)
    if totals:
        counts.coverage_percent = float(totals[-1])
    return counts


@contextlib.contextmanager
def neo4j_server(port: int, password: str, run_dir: Path) -> Iterator[str]:
    """A Neo4j from our own service code (tasks/services, the process backend) on Bolt ``port``.

    For the direct side of a project whose tests need Neo4j: its own CI starts a container on
    a port the project's URL variable names; the pipeline's backend takes free ports per run,
    so here the same backend is given ``port`` (HTTP on ``port + 1``). Yields the bolt URI.
    """
    sys.path.insert(0, str(HERE))
    from cicd.config import ServiceConfig
    from tasks.services import neo4j_process

    neo4j_process.free_ports = lambda count, host="127.0.0.1": [port, port + 1][:count]
    backend = neo4j_process.Neo4jProcessBackend(provision_missing=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    server = backend.start("compat", ServiceConfig(backend="process", password=password), run_dir)
    try:
        yield server.endpoint.uri
    finally:
        server.stop()


def run_direct(
    project: Path,
    install: list[str],
    commands: list[list[str]],
    runs: int,
    python: str,
    uv: Path,
    extra_env: dict[str, str],
    service: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
) -> DirectFigures:
    """A fresh uv venv beside the project, its test dependencies, its own command.

    ``service`` (a Neo4j) is started afresh for every run, outside the timing, as a CI job
    gets a fresh service container; each run's output is kept in ``<project>.direct-N.log``.
    """
    venv = project.parent / f"{project.name}-venv"
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    subprocess.run([str(uv), "venv", "-q", "--python", python, str(venv)], check=True)
    subprocess.run(
        [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *install],
        cwd=project,
        check=True,
    )
    figures = DirectFigures(install, commands, round(time.monotonic() - started, 2))
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    env.update(extra_env)
    for number in range(1, runs + 1):
        output, code = [], 0
        with service() if service else contextlib.nullcontext():
            started = time.monotonic()
            for command in commands:
                done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
                output.append(done.stdout + done.stderr)
                code = code or done.returncode
            figures.seconds.append(round(time.monotonic() - started, 2))
        figures.exit_codes.append(code)
        figures.counts = parse_counts("\n".join(output))
        figures.per_run.append(figures.counts)
        log = project.parent / f"{project.name}.direct-{number}.log"
        log.write_text("\n".join(output))
    return figures


def run_pipeline(cicd: Path, project: Path, ref: str, home: Path) -> PipelineRun:
    env = dict(
        os.environ,
        CICD_HOME=str(home / "cicd"),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.pop("PREFECT_API_URL", None)  # the embedded default: a temporary server per run
    started = time.monotonic()
    done = subprocess.run(
        [str(cicd), "run", "pr-validation", "--repo", str(project), "--ref", ref, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = round(time.monotonic() - started, 2)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"state": "no-json", "error": (done.stdout + done.stderr)[-2000:]}
    jobs = [
        {
            key: job.get(key)
            for key in (
                "name",
                "state",
                "passed",
                "failed",
                "errors",
                "skipped",
                "coverage_percent",
                "duration",
                "cached_from",
            )
            if job.get(key) is not None
        }
        | {
            "failures": [
                f.get("name", f) if isinstance(f, dict) else f for f in job.get("failures", [])
            ]
        }
        for job in report.get("jobs", [])
    ]
    if "error" in report:
        jobs.append({"error": report["error"]})
    return PipelineRun(done.returncode, seconds, str(report.get("state")), jobs)


def resolve(project: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(project), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="a git work tree of the project")
    parser.add_argument("--ref", default="HEAD", help="what the pipeline runs (default HEAD)")
    parser.add_argument(
        "--install",
        action="append",
        default=[],
        help="one `uv pip install` argument (repeat): '-e', '.[test]', '--group'",
    )
    parser.add_argument(
        "--direct",
        action="append",
        default=[],
        help="the project's own test command (repeat for several, in order)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the direct command (repeat)"
    )
    parser.add_argument(
        "--neo4j-port",
        type=int,
        help="start Neo4j (our process backend) on this Bolt port for the direct side",
    )
    parser.add_argument("--neo4j-password", default="test-password")
    parser.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--direct-runs", type=int, help="runs of the direct command (default: --runs)"
    )
    parser.add_argument("--broken-ref", help="a commit that breaks one test: run it twice")
    parser.add_argument(
        "--broken-runs", type=int, default=2, help="pipeline runs of --broken-ref (default 2)"
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="CICD_HOME/PREFECT_HOME parent (default: <project>.cicd-home, wiped)",
    )
    parser.add_argument("--cicd", type=Path, default=DEFAULT_CICD)
    parser.add_argument("--uv", type=Path, default=DEFAULT_UV)
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--json-out", type=Path, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    figures: dict[str, Any] = {"project": str(project), "commit": resolve(project, args.ref)}

    if not args.skip_direct and args.direct:
        service = None
        if args.neo4j_port:
            service = functools.partial(
                neo4j_server,
                args.neo4j_port,
                args.neo4j_password,
                project.parent / f"{project.name}.neo4j",
            )
        direct = run_direct(
            project,
            args.install,
            [shlex.split(c) for c in args.direct],
            args.direct_runs or args.runs,
            args.python,
            args.uv,
            dict(pair.split("=", 1) for pair in args.env),
            service,
        )
        figures["direct"] = asdict(direct) | {"median_seconds": statistics.median(direct.seconds)}
        print(f"direct: {' && '.join(args.direct)}  (installed: {' '.join(args.install)})")
        print(f"  exit {direct.exit_codes}  counts per run {[asdict(c) for c in direct.per_run]}")
        print(
            f"  venv+install {direct.setup_seconds}s  runs {direct.seconds}"
            f"  median {statistics.median(direct.seconds)}s"
        )

    if not args.skip_pipeline:
        home = (args.home or project.parent / f"{project.name}.cicd-home").resolve()
        shutil.rmtree(home, ignore_errors=True)  # the first run is cold: no mirror, env, cache
        runs = [run_pipeline(args.cicd, project, figures["commit"], home) for _ in range(args.runs)]
        figures["pipeline"] = [asdict(r) for r in runs]
        print(f"pipeline: cicd run pr-validation --ref {figures['commit']} --json")
        for number, run in enumerate(runs, 1):
            print(f"  run {number}: exit {run.exit_code} {run.state} {run.seconds}s")
            for job in run.jobs:
                print(f"    {job}")
        cached = [r.seconds for r in runs[1:]]
        print(
            f"  cold {runs[0].seconds}s  cached median "
            f"{round(statistics.median(cached), 2) if cached else '-'}s"
        )
        if args.broken_ref:
            broken = resolve(project, args.broken_ref)
            reruns = [
                run_pipeline(args.cicd, project, broken, home) for _ in range(args.broken_runs)
            ]
            figures["broken"] = {"commit": broken, "runs": [asdict(r) for r in reruns]}
            print(f"broken commit {broken}:")
            for number, run in enumerate(reruns, 1):
                failed = [f for job in run.jobs for f in job.get("failures", [])]
                states = {job.get("name"): job.get("state") for job in run.jobs}
                print(
                    f"  run {number}: exit {run.exit_code} {run.state} {run.seconds}s "
                    f"jobs {states} failed tests {failed}"
                )

    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
