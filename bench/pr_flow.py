"""Benchmark the PR validation flow on the sample target.

Two measurements, each against a baseline taken in the same invocation (this is
a shared 2-core machine: read medians and ratios, not single runs):

1. ``flow-vs-shell``: the flow's wall time against the same commands run one
   after another by a plain shell script (git clone, ruff, mypy, black --check,
   pytest with coverage), on a variant of the sample without the Neo4j job
   (the shell script has no service to start). Both use the same warm
   environment, so the difference is Prefect's overhead minus what running
   the jobs in parallel saves. The flow talks to a running Prefect server.
2. ``reruns`` (issue 6): on the full sample (with Neo4j) and a running server,
   a cold run of a new commit (environment warm, nothing cached), a rerun of
   the same commit (served from the Prefect cache) and a docs-only commit with
   ``--base`` (jobs skipped), as times and as ratios to the cold run.

    .venv/bin/python bench/pr_flow.py [--runs 5]

Writes JSON to bench/results/pr_flow.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRATCH = Path(tempfile.mkdtemp(prefix="cicd-bench-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = free_port()
os.environ.update(
    CICD_HOME=str(SCRATCH / "home"),
    PREFECT_HOME=str(SCRATCH / "prefect"),
    PREFECT_API_URL=f"http://127.0.0.1:{PORT}/api",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
    PREFECT_LOCAL_STORAGE_PATH=str(SCRATCH / "storage"),
)
# The Neo4j jars stay in the developer's cache: the bench measures runs, not downloads.
os.environ.setdefault(
    "CICD_NEO4J_HOME", str(Path.home() / ".cache/cicd-flows/services/neo4j/5.26.30")
)
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from cicd.sample import commit_all, create_sample_repo, git  # noqa: E402

# The PR workflow's commands as a plain shell script (shared with bench/cli_vs_shell.py).
SHELL_SCRIPT = (ROOT / "bench" / "pr_workflow.sh").read_text()


def start_server() -> subprocess.Popen[bytes]:
    log = (SCRATCH / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(PORT)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("Prefect server did not start")


def timed(fn: object, *args: object, **kwargs: object) -> tuple[float, object]:
    started = time.perf_counter()
    try:
        result = fn(*args, **kwargs)  # type: ignore[operator]
    except Exception as exc:
        result = exc
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def flow_vs_shell(repo: Path, runs: int) -> dict[str, object]:
    from cicd.config import load_config
    from flows.pr_validation import pr_validation
    from tasks.environments import ensure_environment, tool_packages

    # The variant without the Neo4j job, on a branch of its own.
    git(repo, "checkout", "--quiet", "-B", "bench-no-neo4j", "main")
    config = (repo / "cicd.yaml").read_text()
    config = config.replace("suites: [unit, framework]", "suites: [unit]")
    (repo / "cicd.yaml").write_text(config)
    commit_all(repo, "bench: no neo4j job")
    git(repo, "checkout", "--quiet", "main")
    env = ensure_environment(repo, load_config(repo).environment, tool_packages(load_config(repo)))
    script = SCRATCH / "pr.sh"
    script.write_text(SHELL_SCRIPT)

    # Warm-up: the flow builds its environment (same key) and imports Prefect.
    pr_validation(repo=str(repo), ref="bench-no-neo4j")
    flow_times, shell_times = [], []
    for i in range(runs):
        # A new commit per round, so the flow's jobs are never served from its cache.
        git(repo, "checkout", "--quiet", "bench-no-neo4j")
        (repo / "src" / "agentkit" / "bench_round.py").write_text(f"ROUND = {i}\n")
        commit_all(repo, f"bench: round {i}")
        git(repo, "checkout", "--quiet", "main")
        shell, proc = timed(subprocess.run, ["sh", str(script), str(repo), "bench-no-neo4j",
                                             str(env.path)], capture_output=True)
        assert proc.returncode == 0, proc.stdout[-2000:]  # type: ignore[union-attr]
        flow, report = timed(pr_validation, repo=str(repo), ref="bench-no-neo4j")
        assert isinstance(report, dict) and report["state"] == "passed", report
        shell_times.append(shell)
        flow_times.append(flow)
    return {
        "shell_s": shell_times,
        "flow_s": flow_times,
        "shell_median_s": median(shell_times),
        "flow_median_s": median(flow_times),
        "ratio_flow_to_shell": median(flow_times) / median(shell_times),
    }


def reruns(repo: Path, runs: int) -> dict[str, object]:
    from flows.pr_validation import pr_validation

    cold, rerun, docs = [], [], []
    for i in range(runs):
        branch = f"bench-rerun-{i}"
        git(repo, "checkout", "--quiet", "-B", branch, "main")
        (repo / "src" / "agentkit" / "bench_round.py").write_text(f"ROUND = {i}\n")
        commit_all(repo, f"feat: round {i}")
        git(repo, "checkout", "--quiet", "-B", f"{branch}-docs", branch)
        (repo / "docs" / "usage.md").write_text(f"# Usage\n\nRound {i}.\n")
        commit_all(repo, f"docs: round {i}")
        git(repo, "checkout", "--quiet", "main")
        t_cold, r_cold = timed(pr_validation, repo=str(repo), ref=branch)
        t_rerun, r_rerun = timed(pr_validation, repo=str(repo), ref=branch)
        t_docs, r_docs = timed(pr_validation, repo=str(repo), ref=f"{branch}-docs", base=branch)
        assert {j["state"] for j in r_cold["jobs"]} == {"passed"}, r_cold  # type: ignore[index]
        assert {j["state"] for j in r_rerun["jobs"]} == {"cached"}, r_rerun  # type: ignore[index]
        assert {j["state"] for j in r_docs["jobs"]} == {"skipped"}, r_docs  # type: ignore[index]
        cold.append(t_cold)
        rerun.append(t_rerun)
        docs.append(t_docs)
    return {
        "cold_s": cold,
        "rerun_s": rerun,
        "docs_only_s": docs,
        "cold_median_s": median(cold),
        "rerun_median_s": median(rerun),
        "docs_only_median_s": median(docs),
        "rerun_ratio": median(rerun) / median(cold),
        "docs_only_ratio": median(docs) / median(cold),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("flow-vs-shell", "reruns"))
    args = parser.parse_args()
    server = start_server()
    try:
        repo = create_sample_repo(SCRATCH / "agentkit")
        results: dict[str, object] = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "runs": args.runs,
        }
        if args.only in (None, "flow-vs-shell"):
            results["flow_vs_shell"] = flow_vs_shell(repo, args.runs)
        if args.only in (None, "reruns"):
            results["reruns"] = reruns(repo, args.runs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    out = ROOT / "bench" / "results" / "pr_flow.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
