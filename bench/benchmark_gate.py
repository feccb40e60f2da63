"""The benchmark gate on a public suite: an unchanged commit N times, a slowed one M times.

The figures of ``bench/README.md`` ("Benchmark gate"). The target is a clone of a
project with a pytest-benchmark suite, prepared with two local commits:

* ``--ref``: a ``cicd.yaml`` with ``benchmarks: {paths: [...]}`` and the baseline that
  ``cicd baseline`` recorded on it, committed (the gate's baseline code is the commit
  that last changed the baseline file);
* ``--slow-ref``: a commit on top that makes a hot path slower.

Each attempt checks the ref out and runs the performance-baseline job exactly as the
integration flow does (``tasks.benchmarks.run_benchmark_job``), in the environment the
pipeline builds. It prints and writes (``--json-out``) every verdict, the suspects the
first comparison raised and how the re-measurement decided them, and the wall time.

    .venv/bin/python bench/benchmark_gate.py /work/compat-gate/pluggy \
        --ref compat-gate --slow-ref compat-gate-slow --runs 10 --slow-runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from cicd.config import load_config  # noqa: E402
from cicd.git import checkout, remove_workspace  # noqa: E402
from tasks.benchmarks import run_benchmark_job  # noqa: E402
from tasks.environments import ensure_environment, tool_packages  # noqa: E402


def attempt(repo: Path, ref: str, out_dir: Path) -> dict[str, Any]:
    work = checkout(str(repo), ref)
    try:
        config = load_config(work.path)
        if config.benchmarks is None:
            raise SystemExit(f"{repo}@{ref}: cicd.yaml has no benchmarks section")
        env = ensure_environment(work.path, config.environment, tool_packages(config))
        started = time.monotonic()
        result = run_benchmark_job(
            env.python, work.path, config.benchmarks, env.environ(), out_dir
        )
        seconds = time.monotonic() - started
    finally:
        remove_workspace(work.path)
    rows = result.details.get("benchmarks", [])
    return {
        "ref": ref,
        "state": result.state.value,
        "reason": result.reason,
        "seconds": round(seconds, 1),
        "benchmarks": len(rows),
        "regressions": [r["name"] for r in rows if r["verdict"] == "regression"],
        "suspects": {
            r["name"]: r["rule"] for r in rows if r.get("confirmed_against") is not None
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--slow-ref", required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--slow-runs", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="benchmark-gate-") as tmp:
        plan = [(args.ref, i) for i in range(args.runs)]
        plan += [(args.slow_ref, i) for i in range(args.slow_runs)]
        for ref, i in plan:
            row = attempt(args.repo, ref, Path(tmp) / f"{ref}-{i}")
            results.append(row)
            print(json.dumps(row), flush=True)
    for ref in (args.ref, args.slow_ref):
        mine = [r for r in results if r["ref"] == ref]
        if not mine:
            continue
        passed = sum(r["state"] == "passed" for r in mine)
        print(
            f"{ref}: {passed}/{len(mine)} passed, "
            f"{sum(bool(r['suspects']) for r in mine)} with suspects re-measured, "
            f"median {statistics.median(r['seconds'] for r in mine):.0f} s per job"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
