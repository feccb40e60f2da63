"""Benchmark twenty PR runs at once on three workers (issue 16, item 6).

The cluster of tests/test_scale_out.py (tests/scale_cluster.py): a Prefect
server on a throwaway PostgreSQL behind basic auth, registered by ``cicd up
--server-url``, three ``prefect worker start --limit 2`` workers with their own
PREFECT_HOME and local storage path, one shared CICD_HOME. The light sample
(unit suite and ruff, no Neo4j). Measured in one session:

1. a warm-up run (builds the shared environment; not measured);
2. ``--singles`` runs of fresh green commits, one at a time, alone on the
   cluster: submission to final state (the baseline "one run");
3. twenty runs of twenty fresh commits (14 green, 3 failing tests, 3 lint
   errors) created back to back: first submission to last final state,
   against 20 x the median single; per run, submission (``created``) to
   ``start_time`` (p50, p95);
4. the worker that ran a green commit of the batch is stopped and that commit
   is run again: served from the shared cache on another worker; its wall
   time as a ratio to the median cold single.

    .venv/bin/python bench/scale_out.py [--singles 3] [--runs 20]

Prints Markdown, writes JSON to bench/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRATCH = Path(tempfile.mkdtemp(prefix="cicd-bench-scale-"))
os.environ.update(CICD_HOME=str(SCRATCH / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")

from tests.postgres_fixture import postgres_bin_dir, running_postgres  # noqa: E402
from tests.sample_repos import build_sample_repos  # noqa: E402
from tests.scale_cluster import (  # noqa: E402
    Cluster,
    make_light_branches,
    running_cluster,
    worker_of,
)

WORKERS = 3
RUNS_PER_WORKER = 2
TIMEOUT = 1800.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 values p95 is the 19th)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_alone(cluster: Cluster, ref: str) -> tuple[float, Any]:
    started = time.monotonic()
    ((run_id, _, _),) = cluster.submit([ref])
    final = cluster.wait_final([run_id], TIMEOUT)[run_id]
    return time.monotonic() - started, final


def check_verdicts(runs: dict[UUID, Any], refs: dict[UUID, str], expected: dict[str, bool]) -> None:
    wrong = {
        refs[i]: run.state_name
        for i, run in runs.items()
        if run.state.is_completed() is not expected[refs[i]]
    }
    if wrong:
        raise SystemExit(f"wrong verdicts: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--singles", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/test installs it)")
    repo = build_sample_repos(SCRATCH / "repos")["agentkit"]
    red = max(1, args.runs * 3 // 20)
    batch_expected = make_light_branches(repo, args.runs - 2 * red, red, red, prefix="batch")
    singles_expected = make_light_branches(repo, args.singles + 1, 0, 0, prefix="single")
    load_before = os.getloadavg()
    with (
        running_postgres(bin_dir) as postgres,
        running_cluster(postgres, SCRATCH, repo, WORKERS, RUNS_PER_WORKER) as cluster,
    ):
        singles_refs = list(singles_expected)
        run_alone(cluster, singles_refs[0])  # warm-up: the shared environment
        singles = []
        for ref in singles_refs[1:]:
            wall, final = run_alone(cluster, ref)
            if not final.state.is_completed():
                raise SystemExit(f"single run of {ref} ended {final.state_name}")
            singles.append(wall)

        started = time.monotonic()
        created = cluster.submit(list(batch_expected))
        final_runs = cluster.wait_final([run_id for run_id, _, _ in created], TIMEOUT)
        batch_wall = time.monotonic() - started
        refs = {run_id: ref for run_id, ref, _ in created}
        check_verdicts(final_runs, refs, batch_expected)
        to_start = [(run.start_time - run.created).total_seconds() for run in final_runs.values()]
        per_worker: dict[str, int] = {}
        for run in final_runs.values():
            per_worker[worker_of(run)] = per_worker.get(worker_of(run), 0) + 1

        green_id = next(i for i, ref in refs.items() if batch_expected[ref])
        a = worker_of(final_runs[green_id])
        cluster.stop_worker(a)
        rerun_wall, rerun = run_alone(cluster, refs[green_id])
        rerun_jobs = {
            name: "cached" if state.name == "Cached" else state.name
            for name, state in cluster.job_states(rerun.id).items()
        }
        rerun_worker = worker_of(rerun)
    load_after = os.getloadavg()

    single = statistics.median(singles)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "load_before": load_before,
        "load_after": load_after,
        "workers": WORKERS,
        "runs_per_worker": RUNS_PER_WORKER,
        "singles_s": singles,
        "single_median_s": single,
        "batch_runs": len(created),
        "batch_wall_s": batch_wall,
        "batch_vs_serial": batch_wall / (len(created) * single),
        "submission_to_start_s": sorted(to_start),
        "start_p50_s": percentile(to_start, 0.50),
        "start_p95_s": percentile(to_start, 0.95),
        "runs_per_worker_seen": per_worker,
        "rerun_from": a,
        "rerun_on": rerun_worker,
        "rerun_s": rerun_wall,
        "rerun_vs_cold": rerun_wall / single,
        "rerun_jobs": rerun_jobs,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_out.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    n = len(created)
    print("| measurement | value |")
    print("|---|---|")
    each = ", ".join(f"{s:.1f}" for s in singles)
    print(f"| one run alone (median of {len(singles)}) | {single:.1f} s ({each}) |")
    print(f"| {n} runs at once, first submission to last final | {batch_wall:.1f} s |")
    print(f"| {n} x one run | {n * single:.1f} s |")
    print(f"| **ratio {n} at once / {n} x one** | **{results['batch_vs_serial']:.2f}** |")
    p50, p95 = results["start_p50_s"], results["start_p95_s"]
    print(f"| submission to start, p50 / p95 | {p50:.1f} s / {p95:.1f} s |")
    print(f"| runs per worker | {', '.join(f'{k} {v}' for k, v in sorted(per_worker.items()))} |")
    print(f"| rerun of a commit of {a} on {rerun_worker} ({rerun_jobs}) | {rerun_wall:.1f} s |")
    print(f"| **rerun / cold single** | **{results['rerun_vs_cold']:.2f}** |")
    print(
        f"\n{results['machine']}; load {load_before} before, {load_after} after; {results['date']}"
    )


if __name__ == "__main__":
    main()
