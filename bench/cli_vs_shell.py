"""``cicd run`` as a user runs it, whole processes, against a plain shell script.

Issue "As fast as a shell script": the figures of ``bench/pr_flow.py`` are taken
inside one warmed-up Python process and never pay what a user pays (the
interpreter's start, Prefect's import, the flow's opening and end). Here every
measurement is a fresh process, on the embedded default (no ``PREFECT_API_URL``:
the local server that ``cicd run`` starts once and reuses, issue 15 item 1):

1. ``pipeline`` vs ``shell``: ``cicd run pr-validation`` on the sample without
   its Neo4j job against the same commands one after another in ``sh``,
   interleaved pairs, a new commit per round so nothing is cached;
2. ``cached``: the same commit again through the CLI (every job served from the
   cache);
3. ``fresh``: the first run with empty ``CICD_HOME`` and ``PREFECT_HOME`` (server
   start, database migration, environments built) against a warm run;
4. ``help``: ``cicd --help``.

    .venv/bin/python bench/cli_vs_shell.py [--runs 5] [--fresh-runs 2]

Writes bench/results/cli_vs_shell.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRATCH = Path(tempfile.mkdtemp(prefix="cicd-bench-cli-"))
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from cicd.sample import commit_all, create_sample_repo, git  # noqa: E402


def homes(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CICD_"))}
    env.update(
        CICD_HOME=str(SCRATCH / name / "cicd"),
        PREFECT_HOME=str(SCRATCH / name / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CICD_NEO4J_HOME=os.environ.get(
            "CICD_NEO4J_HOME", str(Path.home() / ".cache/cicd-flows/services/neo4j")
        ),
    )
    return env


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return took


def run_argv(repo: Path) -> list[str]:
    return [
        str(BIN / "cicd"),
        "run",
        "pr-validation",
        "--repo",
        str(repo),
        "--ref",
        "bench-no-neo4j",
        "--quiet",
        "--json",
    ]


def new_commit(repo: Path, label: str) -> None:
    git(repo, "checkout", "--quiet", "bench-no-neo4j")
    (repo / "src" / "agentkit" / "bench_round.py").write_text(f'ROUND = "{label}"\n')
    commit_all(repo, f"bench: round {label}")
    git(repo, "checkout", "--quiet", "main")


def stop_stack(env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "cicd"), "down"], env=env, capture_output=True, timeout=120)


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fresh-runs", type=int, default=2)
    args = parser.parse_args()
    repo = create_sample_repo(SCRATCH / "agentkit")
    git(repo, "checkout", "--quiet", "-B", "bench-no-neo4j", "main")
    config = (repo / "cicd.yaml").read_text().replace("suites: [unit, framework]", "suites: [unit]")
    (repo / "cicd.yaml").write_text(config)
    commit_all(repo, "bench: no neo4j job")
    git(repo, "checkout", "--quiet", "main")
    script = ROOT / "bench" / "pr_workflow.sh"
    warm = homes("warm")
    results: dict[str, object] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg()[0],
    }
    try:
        first = timed(run_argv(repo), warm)  # builds the environment, starts the local server
        env_path = next(
            p for p in (Path(warm["CICD_HOME"]) / "envs").iterdir() if (p / "bin/python").exists()
        )
        shell_s, pipeline_s, cached_s, help_s = [], [], [], []
        for i in range(args.runs):
            new_commit(repo, f"warm-{i}")
            shell_s.append(
                timed(["sh", str(script), str(repo), "bench-no-neo4j", str(env_path)], warm)
            )
            pipeline_s.append(timed(run_argv(repo), warm))
            cached_s.append(timed(run_argv(repo), warm))
            help_s.append(timed([str(BIN / "cicd"), "--help"], warm))
        results.update(
            first_run_in_warm_homes_s=round(first, 3),
            shell_s=shell_s,
            pipeline_s=pipeline_s,
            cached_s=cached_s,
            help_s=help_s,
            shell_median_s=med(shell_s),
            pipeline_median_s=med(pipeline_s),
            cached_median_s=med(cached_s),
            help_median_s=med(help_s),
            ratio_pipeline_to_shell=round(med(pipeline_s) / med(shell_s), 3),
        )
        fresh_s, warm_s = [], []
        for i in range(args.fresh_runs):
            fresh = homes(f"fresh-{i}")
            new_commit(repo, f"fresh-{i}")
            try:
                fresh_s.append(timed(run_argv(repo), fresh))
            finally:
                stop_stack(fresh)
            new_commit(repo, f"fresh-warm-{i}")
            warm_s.append(timed(run_argv(repo), warm))
        results.update(
            fresh_s=fresh_s,
            fresh_warm_s=warm_s,
            fresh_median_s=med(fresh_s),
            fresh_warm_median_s=med(warm_s),
            fresh_extra_s=round(med(fresh_s) - med(warm_s), 3),
        )
    finally:
        stop_stack(warm)
        results["load_after"] = os.getloadavg()[0]
    out = ROOT / "bench" / "results" / "cli_vs_shell.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
