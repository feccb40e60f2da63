"""What a test job adds to pytest: the job's steps against the same commands run
directly, in the same environment, on a synthetic suite of tens of thousands
of tests, interleaved round by round, medians.

    .venv/bin/python bench/job_overhead.py [--tests 30000] [--rounds 5] [--no-coverage]
        [--no-warmup]

The suite: a package ``synth`` and ``--files`` test modules, each one
parametrized test over ``tests / files`` values; pytest's ``testpaths`` and
coverage's ``source`` in ``pyproject.toml``, as a real project has them. Both
sides run the very argv the job builds (``tasks.testing.pytest_argv``: under
``coverage run`` unless ``--no-coverage``) from the workspace with the job's
environment variables. The direct side runs it with ``subprocess`` and its
output to a file, then (with coverage) ``coverage json`` and ``coverage
report``; the job side is ``tasks.testing.run_suite``: the step in its box
(``CICD_SANDBOX`` as set, ``auto`` by default), the JUnit report parsed, the
coverage reports. Compared: the pytest step alone, and the whole job against
the direct commands together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cicd import paths
from cicd.config import EnvironmentConfig, SuiteConfig
from tasks.environments import Environment, ensure_environment
from tasks.job import Deadline
from tasks.pytest_outcome import parse_junit
from tasks.testing import pytest_argv, run_suite

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = '''"""The code under test."""


def square(value: int) -> int:
    return value * value


def label(value: int) -> str:
    if value % 2:
        return "odd"
    return "even"
'''

TEST_MODULE = """import pytest

from synth import label, square


@pytest.mark.parametrize("value", range({start}, {stop}))
def test_square_{index}(value: int) -> None:
    assert square(value) == value * value
    assert label(value) in ("odd", "even")
"""

PYPROJECT = """[project]
name = "synth"
version = "0"

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.coverage.run]
source = ["synth"]
"""


def make_suite(workspace: Path, tests: int, files: int) -> None:
    (workspace / "src" / "synth").mkdir(parents=True)
    (workspace / "src" / "synth" / "__init__.py").write_text(PACKAGE)
    (workspace / "tests").mkdir()
    (workspace / "pyproject.toml").write_text(PYPROJECT)
    per_file = tests // files
    for index in range(files):
        start = index * per_file
        module = TEST_MODULE.format(start=start, stop=start + per_file, index=index)
        (workspace / "tests" / f"test_synth_{index:03d}.py").write_text(module)


def direct(
    env: Environment, workspace: Path, suite: SuiteConfig, reports: Path
) -> dict[str, float]:
    """The job's own commands, run as a developer would run them."""
    data = reports / ".coverage-direct"
    environ = env.environ()
    measures = bool(suite.coverage)
    if measures:
        environ["COVERAGE_FILE"] = str(data)
    argv = pytest_argv(env.python, suite, reports / "junit-direct.xml", coverage=measures)
    with tempfile.TemporaryFile() as sink:
        started = time.monotonic()
        done = subprocess.run(argv, cwd=workspace, env=environ, stdout=sink, stderr=sink,
                              check=False)  # fmt: skip
        pytest_s = time.monotonic() - started
    assert done.returncode == 0, f"direct pytest exit {done.returncode}"
    if measures:
        coverage = [str(env.python), "-m", "coverage"]
        for args in (["json", "-q", "-o", str(reports / "direct.json")], ["report"]):
            subprocess.run([*coverage, *args, f"--data-file={data}"], cwd=workspace,
                           env=environ, check=True, capture_output=True)  # fmt: skip
    return {"pytest": pytest_s, "total": time.monotonic() - started}


def job(env: Environment, workspace: Path, suite: SuiteConfig, reports: Path) -> dict[str, float]:
    started = time.monotonic()
    result = run_suite("bench", workspace, env, suite, reports, Deadline(3600))
    total = time.monotonic() - started
    assert result.state.ok, (result.reason, result.steps[0].output_tail)
    return {"pytest": result.steps[0].duration, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=30_000)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-coverage", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args()

    workspace = paths.workspaces() / f"bench-overhead-{uuid.uuid4().hex[:8]}"
    reports = paths.runs() / f"bench-overhead-{workspace.name}" / "reports"
    workspace.mkdir(parents=True)
    reports.mkdir(parents=True)
    try:
        make_suite(workspace, args.tests, args.files)
        env = ensure_environment(workspace, EnvironmentConfig(), ["pytest", "coverage"])
        suite = SuiteConfig(coverage=not args.no_coverage, timeout=3600)
        samples: dict[str, list[dict[str, float]]] = {"direct": [], "job": []}
        if not args.no_warmup:
            direct(env, workspace, suite, reports)  # warm-up: bytecode, page cache
        for round_no in range(args.rounds):
            # Alternate which side goes first, so that neither always runs warmer.
            order = [("direct", direct), ("job", job)]
            for side, measure in order if round_no % 2 == 0 else order[::-1]:
                samples[side].append(measure(env, workspace, suite, reports))
                print(f"round {round_no + 1} {side}: {samples[side][-1]}", file=sys.stderr)
        junit = reports / "junit-bench.xml"
        parse_s = min(_timed(parse_junit, junit) for _ in range(3))
        counts = parse_junit(junit)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[side])

    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "tests": counts.total,
        "coverage": not args.no_coverage,
        "sandbox": os.environ.get("CICD_SANDBOX", "auto"),
        "rounds": args.rounds,
        "parse_junit_s": round(parse_s, 3),
        "samples": samples,
    }
    for key in ("pytest", "total"):
        summary[f"{key}_direct_median_s"] = round(median("direct", key), 2)
        summary[f"{key}_job_median_s"] = round(median("job", key), 2)
        summary[f"{key}_ratio"] = round(median("job", key) / median("direct", key), 3)
    out = ROOT / "bench" / "results" / "job_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(reports.parent, ignore_errors=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))


def _timed(function: object, *args: object) -> float:
    started = time.perf_counter()
    function(*args)  # type: ignore[operator]
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
