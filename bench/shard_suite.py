"""A large suite sharded against the same suite unsharded: wall time of the test
job (``tasks.testing.run_suite``, coverage on), and the counts and coverage of
both sides, which must be identical. Rounds interleaved, medians.

    .venv/bin/python bench/shard_suite.py [--tests 30000] [--files 30] [--rounds 5] [--shards 2]

The suite is ``bench/job_overhead.py``'s: ``--files`` modules of one
parametrized test each. The first sharded round has no recorded durations (its
split is by test count); later rounds use the durations the earlier ones
recorded, as a project's second run does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from job_overhead import make_suite

from cicd import paths
from cicd.config import EnvironmentConfig, SuiteConfig
from cicd.results import JobResult
from tasks.environments import Environment, ensure_environment
from tasks.job import Deadline
from tasks.testing import run_suite

ROOT = Path(__file__).resolve().parent.parent


def one(env: Environment, workspace: Path, suite: SuiteConfig, reports: Path) -> JobResult:
    result = run_suite("bench", workspace, env, suite, reports, Deadline(3600))
    assert result.state.ok, (result.reason, [s.output_tail[-500:] for s in result.steps])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=30_000)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()

    workspace = paths.workspaces() / f"bench-shard-{uuid.uuid4().hex[:8]}"
    reports = paths.runs() / f"bench-shard-{workspace.name}" / "reports"
    workspace.mkdir(parents=True)
    reports.mkdir(parents=True)
    sides = {
        "unsharded": SuiteConfig(coverage=True, timeout=3600),
        "sharded": SuiteConfig(coverage=True, timeout=3600, parallel=args.shards),
    }
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    outcomes: dict[str, set[str]] = {side: set() for side in sides}
    try:
        make_suite(workspace, args.tests, args.files)
        env = ensure_environment(workspace, EnvironmentConfig(), ["pytest", "coverage"])
        one(env, workspace, sides["unsharded"], reports)  # warm-up: bytecode, page cache
        order = list(sides)
        for round_no in range(args.rounds):
            for side in order if round_no % 2 == 0 else order[::-1]:
                started = time.monotonic()
                result = one(env, workspace, sides[side], reports)
                seconds[side].append(time.monotonic() - started)
                outcomes[side].add(f"{result.tests}, coverage {result.coverage_percent}")
                print(f"round {round_no + 1} {side}: {seconds[side][-1]:.2f}s", file=sys.stderr)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(reports.parent, ignore_errors=True)

    medians = {side: statistics.median(values) for side, values in seconds.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "tests": args.tests,
        "files": args.files,
        "shards": args.shards,
        "rounds": args.rounds,
        "median_s": {side: round(value, 2) for side, value in medians.items()},
        "ratio_sharded_to_unsharded": round(medians["sharded"] / medians["unsharded"], 3),
        "identical_outcomes": outcomes["sharded"] == outcomes["unsharded"]
        and len(outcomes["sharded"]) == 1,
        "outcomes": {side: sorted(values) for side, values in outcomes.items()},
        "seconds": seconds,
    }
    out = ROOT / "bench" / "results" / "shard_suite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "seconds"}, indent=2))


if __name__ == "__main__":
    main()
