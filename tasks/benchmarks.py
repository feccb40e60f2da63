"""Performance baselines: run the target's pytest-benchmark suite, compare to a
baseline stored in its repository, and flag regressions (seed 003, FR-011.7).

How a run is measured
---------------------
The suite is run as ``rounds`` separate pytest invocations (``BenchmarkConfig.rounds``,
default 5), each writing pytest-benchmark JSON. The figure of one benchmark in one
round is the median of that invocation's samples (recomputed from ``stats.data``
when the JSON carries the raw samples, else ``stats.median``).

Why separate invocations rather than one invocation with many iterations: the
noise on a shared CI machine is bursty and correlated in time (another job takes
the second core for a few seconds), and it also lives at process level (memory
layout, hash seed, import order, CPU frequency). The thousands of samples one
pytest-benchmark invocation collects are taken within about a second of each
other, so they share the same disturbance: they are not independent, and any test
pooling them would call a 1% difference "significant". Separate invocations
spread over time are close to independent draws, which is what the rank test
below assumes. The price is one pytest start-up (about a second) per round.

How the rounds are compared with the baseline: ``tasks/benchmark_stats.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cicd.command import run
from cicd.config import BenchmarkConfig
from cicd.errors import BadInput, CicdError, InfrastructureError
from cicd.results import JobResult, JobState
from tasks.benchmark_baseline import BenchmarkError, Stats, load_baseline, parse_benchmark_json
from tasks.benchmark_stats import (
    DEFAULT_ALPHA,
    Comparison,
    compare,
    format_seconds,
    render_comparison_markdown,
)
from tasks.job import JobContext, JobInputs

# --------------------------------------------------------------------------- running


def run_benchmarks(
    python: Path | str,
    workdir: Path,
    paths: Sequence[str],
    rounds: int,
    env: Mapping[str, str] | None,
    out_dir: Path,
    timeout: float,
) -> list[dict[str, Stats]]:
    """Run the suite ``rounds`` times, one pytest process each; returns per-round stats.

    ``timeout`` bounds all rounds together (it is ``BenchmarkConfig.timeout``); each
    round gets what is left. Round N writes ``out_dir/round-N.json`` and its output
    to ``out_dir/round-N.log``.
    """
    if rounds < 1:
        raise BadInput(f"benchmarks.rounds must be at least 1, got {rounds}")
    if not paths:
        raise BadInput("benchmarks.paths is empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Stats]] = []
    remaining = timeout
    for number in range(1, rounds + 1):
        json_path = out_dir / f"round-{number}.json"
        log_path = out_dir / f"round-{number}.log"
        json_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        argv = [
            str(python),
            "-m",
            "pytest",
            *paths,
            "--benchmark-only",
            f"--benchmark-json={json_path}",
            "-q",
        ]
        if remaining <= 0:
            raise BenchmarkError(
                f"benchmarks timed out after {timeout:.0f}s before round {number} of {rounds}"
            )
        try:
            result = run(argv, cwd=workdir, env=env, timeout=remaining, log_path=log_path)
        except FileNotFoundError:
            raise InfrastructureError(f"benchmark interpreter {python} not found") from None
        remaining -= result.duration
        if result.timed_out:
            raise BenchmarkError(
                f"benchmarks timed out after {timeout:.0f}s in round {number} of {rounds} "
                f"(`{result.display}`, log {log_path})"
            )
        if result.returncode == 4 and "--benchmark" in result.output:
            raise BadInput(
                "pytest-benchmark is not installed in the target environment: add "
                "'pytest-benchmark' to environment.packages or to the installed extra"
            )
        if result.returncode == 5:
            raise BadInput(f"benchmarks.paths {list(paths)}: pytest collected no tests")
        if not result.ok:
            raise BenchmarkError(
                f"benchmark round {number} of {rounds} failed with exit code "
                f"{result.returncode} (`{result.display}`, log {log_path}):\n{result.tail()}"
            )
        # pytest-benchmark writes no JSON at all when no test used the fixture.
        stats = parse_benchmark_json(json_path) if json_path.is_file() else {}
        if not stats:
            raise BadInput(
                f"benchmarks.paths {list(paths)}: no test uses the pytest-benchmark "
                "`benchmark` fixture"
            )
        results.append(stats)
    return results


def check_benchmarks(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    env: Mapping[str, str] | None,
    out_dir: Path,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Load the baseline (first: a missing one fails before minutes of running),
    run the rounds and compare. The baseline path is relative to ``workdir``."""
    baseline = load_baseline(workdir / config.baseline)
    rounds = run_benchmarks(
        python, workdir, config.paths, config.rounds, env, out_dir, config.timeout
    )
    return compare(baseline, rounds, config.threshold, alpha)


# --- the job -----------------------------------------------------------------------

JOB_NAME = "performance-baseline"


def run_benchmark_job(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    env: Mapping[str, str] | None,
    out_dir: Path,
) -> JobResult:
    """The seed's ``performance-baseline`` job, with its comparison as the summary section."""
    started = time.monotonic()
    try:
        comparison = check_benchmarks(python, workdir, config, env, out_dir)
    except (CicdError, OSError) as exc:
        # A missing or corrupt baseline is an error of the stage, never a pass.
        return JobResult(
            JOB_NAME,
            JobState.FAILED,
            time.monotonic() - started,
            reason=str(exc),
            section=f"## Performance baseline\n\n❌ {exc}",
        )
    regressions = comparison.regressions
    reason = ""
    if regressions:
        reason = "regression: " + ", ".join(
            f"{row.name} {format_seconds(row.baseline)} -> {format_seconds(row.current)}"
            for row in regressions
        )
    rows = [
        {
            "name": row.name,
            "verdict": row.verdict,
            "baseline": row.baseline,
            "current": row.current,
            "change": row.change,
            "p_value": row.p_value,
        }
        for row in comparison.rows
    ]
    return JobResult(
        JOB_NAME,
        JobState.FAILED if regressions else JobState.PASSED,
        time.monotonic() - started,
        reason=reason,
        details={"benchmarks": rows},
        section=render_comparison_markdown(comparison),
    )


@dataclass(frozen=True)
class BenchmarkJob:
    """The seed's ``performance-baseline`` job: the suite against the stored baseline."""

    python: Path
    config: BenchmarkConfig
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = JOB_NAME

    kind: ClassVar[str] = "benchmarks"
    version: ClassVar[str] = "1"

    @property
    def timeout(self) -> float:
        return self.config.timeout

    def inputs(self) -> JobInputs:
        # Timings are measured afresh on every run: never cached.
        return JobInputs(None, config=self.config)

    def run(self, context: JobContext) -> JobResult:
        out_dir = context.run.reports / "benchmarks"
        return run_benchmark_job(self.python, context.workspace, self.config, self.env, out_dir)
