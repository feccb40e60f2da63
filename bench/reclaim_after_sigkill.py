"""Benchmark: time from a SIGKILL of `cicd run` mid-job to everything reclaimed.

Each round commits a new Neo4j test that keeps the framework job busy, runs
``cicd run pr-validation`` on the embedded default (the local server of
``cicd run``; no PREFECT_API_URL), waits until its Neo4j listens, SIGKILLs the
CLI process alone and measures, from the kill:

- ``gc``: until ``cicd gc`` returned, with every recorded process, group,
  port, workspace, service home and record of the killed run gone (checked);
- and the cost of the start-up reclaim of a ``cicd`` command when there is
  nothing to reclaim (``reclaim()`` in-process over the records left by live
  owners: ``--live-claims`` of them).

    .venv/bin/python bench/reclaim_after_sigkill.py [--runs 5] [--live-claims 50]

Prints a Markdown table and writes JSON to bench/results/reclaim_after_sigkill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
WORK = Path(tempfile.mkdtemp(prefix="bench-reclaim-"))
_user_home = Path(os.environ.get("CICD_HOME") or Path.home() / ".cache" / "cicd-flows")
os.environ.setdefault("CICD_NEO4J_HOME", str(_user_home / "services" / "neo4j" / "5.26.30"))
os.environ["CICD_HOME"] = str(WORK / "cicd-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from cicd import ownership, reclaim  # noqa: E402
from tests.reclaim_fault import (  # noqa: E402
    BIN,
    FRAMEWORK_WITH_NEO4J,
    Owned,
    cli_env,
    start_run,
    wait_for_neo4j,
)
from tests.sample_repos import build_sample_repos, commit_on_branch  # noqa: E402


def one_round(repo: Path, index: int) -> dict[str, float]:
    branch = f"bench-sigkill-{index}"
    with commit_on_branch(repo, branch, f"test: busy Neo4j suite {index}"):
        (repo / "tests" / "integration" / "test_busy.py").write_text(FRAMEWORK_WITH_NEO4J)
    # A database per round: a SIGKILLed run never releases its Neo4j slot lease
    # (see bench/README.md), and the next round on the same database would wait.
    env = cli_env(WORK / f"prefect-home-{index}")
    proc = start_run(repo, branch, env, WORK / f"cicd-{index}.log")
    owned = Owned(proc.pid)
    try:
        owned = wait_for_neo4j(proc, 600)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        done = subprocess.run(
            [str(BIN / "cicd"), "gc", "--json"], env=env, capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip
        gc_done = time.monotonic() - killed
        left = owned.leftovers()
        assert left == {"processes": [], "ports": [], "paths": [], "records": []}, left
        reclaimed = len(json.loads(done.stdout)["reclaimed"])
        return {"gc": gc_done, "claims": reclaimed}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        owned.kill_leftovers()


def startup_cost(live_claims: int, repeats: int = 20) -> float:
    held = [ownership.claim("bench") for _ in range(live_claims)]
    try:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            assert reclaim.reclaim() == []
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        for claim in held:
            claim.release()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--live-claims", type=int, default=50)
    args = parser.parse_args()
    repo = build_sample_repos(WORK / "repos")["agentkit"]
    rounds = []
    for index in range(args.runs):
        rounds.append(one_round(repo, index))
        print(f"round {index}: {rounds[-1]}", file=sys.stderr)
    idle = startup_cost(args.live_claims)
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
        "rounds": rounds,
        "median_gc_s": statistics.median(r["gc"] for r in rounds),
        "startup_reclaim_ms": idle * 1000,
        "live_claims": args.live_claims,
    }
    out = REPO_ROOT / "bench" / "results" / "reclaim_after_sigkill.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| measure | median | runs |\n|---|---|---|")
    print(f"| SIGKILL → `cicd gc` done | {result['median_gc_s']:.2f} s | {args.runs} |")
    print(f"| start-up reclaim, {args.live_claims} live claims | {idle * 1000:.1f} ms | 20 |")


if __name__ == "__main__":
    main()
