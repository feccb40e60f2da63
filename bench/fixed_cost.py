"""The fixed cost of ``cicd run`` outside the jobs, with and without the warm runner.

Issue 15, Build item 2: from process start to the first job at most 1 s, from
the last job to exit at most 1 s, a cached rerun through the CLI under 1 s.
Whole processes as a user runs them (``cicd run pr-validation`` on the sample
without its Neo4j job, the embedded default: the local server reused), in
interleaved rounds, a new commit per full run:

- ``warm``: the default (``cicd/cli/warm_runner.py``: the run is a fork of a
  process that imported Prefect and the flows once);
- ``off``: ``CICD_WARM=off``, the run in the CLI's own process (as before);
- ``shell``: ``bench/pr_workflow.sh``, the same commands one after another.

Start and exit are taken here (``time.time()`` around the process, its stdout
read to EOF); the first job's start and the last job's end come from the
run's own progress events (``CICD_TIMINGS_FILE``, one JSON line per job start
and end with the event's ``time.time()``).

    [CICD_SERVER_PORT=4301] .venv/bin/python bench/fixed_cost.py [--runs 5]

Writes bench/results/fixed_cost.json and prints it.
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
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from cicd.sample import commit_all, create_sample_repo, git  # noqa: E402

BRANCH = "bench-no-neo4j"


def environment(scratch: Path, warm: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CICD_"))}
    env.update(
        CICD_HOME=str(scratch / "cicd"),
        PREFECT_HOME=str(scratch / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CICD_NEO4J_HOME=os.environ.get(
            "CICD_NEO4J_HOME", str(Path.home() / ".cache/cicd-flows/services/neo4j")
        ),
    )
    if os.environ.get("CICD_SERVER_PORT"):
        env["CICD_SERVER_PORT"] = os.environ["CICD_SERVER_PORT"]  # a port range to stay in
    if not warm:
        env["CICD_WARM"] = "off"
    return env


def run_argv(repo: Path) -> list[str]:
    return [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", BRANCH]


def measured(argv: list[str], env: dict[str, str], timings: Path | None) -> dict[str, float]:
    """Total seconds; with ``timings``, start -> first job and last job -> exit."""
    if timings is not None:
        timings.unlink(missing_ok=True)
        env = {**env, "CICD_TIMINGS_FILE": str(timings)}
    started = time.time()
    proc = subprocess.run(
        [*argv, "--quiet", "--json"] if timings else argv, env=env, capture_output=True, text=True
    )
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = {"total": ended - started}
    if timings is not None and timings.exists():
        events = [json.loads(line) for line in timings.read_text().splitlines()]
        starts = [e["at"] for e in events if e["event"] == "JobStarted"]
        ends = [e["at"] for e in events if e["event"] == "JobFinished"]
        called = [e["at"] for e in events if e["event"] == "FlowCalled"]
        reported = [e["at"] for e in events if e["event"] == "Reported"]
        if starts:
            result["start_to_first_job"] = min(starts) - started
        if ends:
            result["last_job_to_exit"] = ended - max(ends)
        # The CLI's part and the flow's part of those.
        if called:
            result["start_to_flow_called"] = called[0] - started
        if called and starts:
            result["flow_called_to_first_job"] = min(starts) - called[0]
        if ends and reported:
            result["last_job_to_reported"] = reported[-1] - max(ends)
        if reported:
            result["reported_to_exit"] = ended - reported[-1]
    return result


def new_commit(repo: Path, label: str) -> None:
    git(repo, "checkout", "--quiet", BRANCH)
    (repo / "src" / "agentkit" / "bench_round.py").write_text(f'ROUND = "{label}"\n')
    commit_all(repo, f"bench: round {label}")
    git(repo, "checkout", "--quiet", "main")


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--modes", default="warm,off", help="which of warm,off to run beside the shell script"
    )
    args = parser.parse_args()
    modes = set(args.modes.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="cicd-bench-fixed-"))
    repo = create_sample_repo(scratch / "agentkit")
    git(repo, "checkout", "--quiet", "-B", BRANCH, "main")
    config = (repo / "cicd.yaml").read_text().replace("suites: [unit, framework]", "suites: [unit]")
    (repo / "cicd.yaml").write_text(config)
    commit_all(repo, "bench: no neo4j job")
    git(repo, "checkout", "--quiet", "main")
    timings = scratch / "timings.jsonl"
    envs = {"warm": environment(scratch, warm=True), "off": environment(scratch, warm=False)}
    script = ROOT / "bench" / "pr_workflow.sh"
    results: dict[str, object] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg()[0],
    }
    samples: dict[str, list[float]] = {}

    def add(name: str, values: dict[str, float]) -> None:
        for part, value in values.items():
            samples.setdefault(f"{name}_{part}_s", []).append(round(value, 3))

    try:
        # Builds the environments, starts the local server (both modes share them).
        measured(run_argv(repo), envs["off"], None)
        new_commit(repo, "runner-start")
        results["first_warm_run_with_runner_start_s"] = round(
            measured(run_argv(repo), envs["warm"], timings)["total"], 3
        )
        # The project's environment (the sample's dev extra has ruff, mypy and
        # black), not the quality tools' own (tools-py...).
        env_path = next(
            p
            for p in (scratch / "cicd" / "envs").iterdir()
            if p.name.startswith("py") and (p / "bin/python").exists()
        )
        for i in range(args.runs):
            order = [m for m in ("warm", "off") if m in modes]
            order = order if i % 2 == 0 else order[::-1]
            new_commit(repo, f"shell-{i}")
            add(
                "shell",
                measured(["sh", str(script), str(repo), BRANCH, str(env_path)], envs["warm"], None),
            )
            for mode in order:
                new_commit(repo, f"{mode}-{i}")
                add(f"{mode}_full", measured(run_argv(repo), envs[mode], timings))
            for mode in order:
                add(f"{mode}_cached", measured(run_argv(repo), envs[mode], timings))
            add("help", measured([str(BIN / "cicd"), "--help"], envs["warm"], None))
    finally:
        subprocess.run(
            [str(BIN / "cicd"), "down"], env=envs["off"], capture_output=True, timeout=120
        )
        results["load_after"] = os.getloadavg()[0]
    results["samples"] = samples
    results["medians"] = {name: med(values) for name, values in sorted(samples.items())}
    medians = results["medians"]
    assert isinstance(medians, dict)
    ratios: dict[str, object] = {}
    for mode in ("warm", "off"):
        if mode not in modes:
            continue
        full, shell = samples[f"{mode}_full_total_s"], samples["shell_total_s"]
        ratios[f"{mode}_full_to_shell"] = round(medians[f"{mode}_full_total_s"] / med(shell), 3)
        # The measure: the median of the per-round ratios (each round's run
        # beside the script run just before it), less sensitive to the machine's
        # drift across rounds than a ratio of medians.
        pairs = [f / s for f, s in zip(full, shell, strict=True)]
        ratios[f"{mode}_full_to_shell_median_of_pairs"] = med(pairs)
        ratios[f"{mode}_full_to_shell_pairs"] = [round(r, 3) for r in pairs]
    results["ratios"] = ratios
    out = ROOT / "bench" / "results" / "fixed_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
