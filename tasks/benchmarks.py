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

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cicd import git
from cicd.command import run
from cicd.config import BenchmarkConfig
from cicd.errors import BadInput, CicdError, InfrastructureError
from cicd.results import JobResult, JobState
from tasks.benchmark_baseline import (
    Baseline,
    BenchmarkError,
    Stats,
    load_baseline,
    parse_benchmark_json,
)
from tasks.benchmark_stats import (
    DEFAULT_ALPHA,
    Comparison,
    compare,
    confirm,
    format_seconds,
    render_comparison_markdown,
)
from tasks.job import JobContext, JobInputs
from tasks.rank_statistics import rounds_for_family

# --------------------------------------------------------------------------- running


def _run_round(
    python: Path | str,
    workdir: Path,
    selection: Sequence[str],
    env: Mapping[str, str] | None,
    json_path: Path,
    label: str,
    deadline: float,
    timeout: float,
) -> dict[str, Stats]:
    """One pytest-benchmark invocation over ``selection`` (paths or node ids)."""
    log_path = json_path.with_suffix(".log")
    json_path.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BenchmarkError(f"benchmarks timed out after {timeout:.0f}s before {label}")
    argv = [
        str(python),
        "-m",
        "pytest",
        *selection,
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "-q",
    ]
    try:
        result = run(argv, cwd=workdir, env=env, timeout=remaining, log_path=log_path)
    except FileNotFoundError:
        raise InfrastructureError(f"benchmark interpreter {python} not found") from None
    if result.timed_out:
        raise BenchmarkError(
            f"benchmarks timed out after {timeout:.0f}s in {label} "
            f"(`{result.display}`, log {log_path})"
        )
    if result.returncode == 4 and "--benchmark" in result.output:
        raise BadInput(
            "pytest-benchmark is not installed in the target environment: add "
            "'pytest-benchmark' to environment.packages or to the installed extra"
        )
    if result.returncode == 5:
        raise BadInput(f"benchmarks {list(selection)}: pytest collected no tests")
    if not result.ok:
        raise BenchmarkError(
            f"benchmark {label} failed with exit code {result.returncode} "
            f"(`{result.display}`, log {log_path}):\n{result.tail()}"
        )
    # pytest-benchmark writes no JSON at all when no test used the fixture.
    stats = parse_benchmark_json(json_path) if json_path.is_file() else {}
    if not stats:
        raise BadInput(
            f"benchmarks {list(selection)}: no test uses the pytest-benchmark `benchmark` fixture"
        )
    return stats


def run_benchmarks(
    python: Path | str,
    workdir: Path,
    paths: Sequence[str],
    rounds: int,
    env: Mapping[str, str] | None,
    out_dir: Path,
    timeout: float,
    deadline: float | None = None,
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
    deadline = deadline if deadline is not None else time.monotonic() + timeout
    return [
        _run_round(
            python,
            workdir,
            paths,
            env,
            out_dir / f"round-{number}.json",
            f"round {number} of {rounds}",
            deadline,
            timeout,
        )
        for number in range(1, rounds + 1)
    ]


def _env_for_tree(env: Mapping[str, str] | None, workdir: Path, tree: Path) -> dict[str, str]:
    """``env`` with the checkout's code on ``PYTHONPATH`` replaced by ``tree``'s."""
    environ = dict(env if env is not None else os.environ)
    entries = environ.get("PYTHONPATH", "").split(os.pathsep) if environ.get("PYTHONPATH") else []
    mapped = []
    for entry in entries:
        path = Path(entry)
        mapped.append(
            str(tree / path.relative_to(workdir)) if path.is_relative_to(workdir) else entry
        )
    if mapped:
        environ["PYTHONPATH"] = os.pathsep.join(mapped)
    return environ


def remeasure_suspects(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    screen: Comparison,
    baseline: Baseline,
    env: Mapping[str, str] | None,
    out_dir: Path,
    deadline: float,
) -> Comparison:
    """Measure the screen's suspects again and let ``confirm`` decide.

    Interleaved with the baseline's own code when the history has it: the commit
    that last changed the baseline file, which ``cicd baseline`` recorded on
    (its code is that of the commit it measured). Without it (an uncommitted
    baseline), fresh rounds of this commit are compared with the stored ones.
    """
    suspects = [row.key for row in screen.regressions]
    family = sum(1 for row in screen.rows if row.baseline_rounds and row.current_rounds)
    out_dir = out_dir / "confirm"
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = git.last_commit_changing(workdir, config.baseline)
    current = _Side("current", workdir, dict(env) if env is not None else None)
    if commit is None:
        stored = min(len(baseline.benchmarks[key]) for key in suspects)
        rounds = rounds_for_family(family, screen.alpha, config.confirm_rounds, stored)
        fresh = _measure_sides(python, (current,), suspects, rounds, out_dir, deadline, config)
        samples = {key: (list(baseline.benchmarks[key]), fresh["current"][key]) for key in suspects}
        return confirm(screen, samples, "the stored baseline (not in the history: not interleaved)")

    rounds = rounds_for_family(family, screen.alpha, config.confirm_rounds)
    tree = git.add_worktree(workdir, commit, out_dir / f"baseline-{commit[:12]}")
    try:
        sides = (_Side("baseline", tree, _env_for_tree(env, workdir, tree)), current)
        fresh = _measure_sides(python, sides, suspects, rounds, out_dir, deadline, config)
    finally:
        git.remove_worktree(workdir, tree)
    samples = {key: (fresh["baseline"][key], fresh["current"][key]) for key in suspects}
    measured = {key: pair for key, pair in samples.items() if pair[0] and pair[1]}
    return confirm(screen, measured, f"the baseline's code ({commit[:12]}), interleaved")


@dataclass(frozen=True)
class _Side:
    """One side of a re-measurement: a checkout and the environment it runs with."""

    label: str
    cwd: Path
    env: Mapping[str, str] | None


def _measure_sides(
    python: Path | str,
    sides: Sequence[_Side],
    suspects: Sequence[str],
    rounds: int,
    out_dir: Path,
    deadline: float,
    config: BenchmarkConfig,
) -> dict[str, dict[str, list[float]]]:
    """``rounds`` rounds of the suspects on each side: per side, per benchmark, the figures.

    The side that goes first alternates (ABBA), so a trend in load is shared.
    """
    figures: dict[str, dict[str, list[float]]] = {
        side.label: {key: [] for key in suspects} for side in sides
    }
    for number in range(1, rounds + 1):
        order = sides if number % 2 else tuple(reversed(sides))
        for side in order:
            stats = _run_round(
                python,
                side.cwd,
                suspects,
                side.env,
                out_dir / f"{side.label}-{number}.json",
                f"confirmation round {number} of {rounds} ({side.label})",
                deadline,
                config.timeout,
            )
            for key in suspects:
                if key in stats:
                    figures[side.label][key].append(stats[key].center)
    return figures


def check_benchmarks(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    env: Mapping[str, str] | None,
    out_dir: Path,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Load the baseline (first: a missing one fails before minutes of running),
    run the rounds, compare, and re-measure the suspects before failing anything.
    The baseline path is relative to ``workdir``."""
    baseline = load_baseline(workdir / config.baseline)
    deadline = time.monotonic() + config.timeout
    rounds = run_benchmarks(
        python, workdir, config.paths, config.rounds, env, out_dir, config.timeout, deadline
    )
    screen = compare(baseline, rounds, config.threshold, alpha)
    if screen.ok:
        return screen
    return remeasure_suspects(python, workdir, config, screen, baseline, env, out_dir, deadline)


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
            "rule": row.rule,
            "confirmed_against": row.confirmed_against,
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
