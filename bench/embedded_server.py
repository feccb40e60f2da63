"""Benchmark: a ``cicd run`` with no ``PREFECT_API_URL`` (the embedded default),
before and after the local server is reused (issue 15, item 1).

- ``before``: a checkout of the commit before the change (``--before DIR``,
  e.g. ``git worktree add /tmp/before 12ba89b``), run with this interpreter
  and ``PYTHONPATH=DIR``: every run starts Prefect's temporary server in its
  own process and stops it at the end;
- ``after``: this tree: the first run starts the local server
  (deployments/run_server.py), the next ones reuse it.

Each variant has its own ``CICD_HOME`` and ``PREFECT_HOME``; one warm-up run
each is not counted (migrations, environments, the after variant's server
start). Then rounds alternate the two, whole processes as a user runs them:
``cicd run pr-validation`` on the sample project with its unit suite only
(no Neo4j), the jobs served from the cache after the warm-up, so what is left
is the control plane's cost. The after variant's server RSS is printed apart
(it stays up between runs).

    .venv/bin/python bench/embedded_server.py --before /tmp/before --runs 7

Prints a Markdown table; writes JSON to bench/results/embedded_server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cicd.sample import commit_all, create_sample_repo  # noqa: E402

CLI = "import sys; from cicd.cli.main import main; sys.exit(main())"


def sample(root: Path) -> Path:
    repo = create_sample_repo(root / "agentkit")
    config = repo / "cicd.yaml"
    config.write_text(config.read_text().replace("suites: [unit, framework]", "suites: [unit]", 1))
    commit_all(repo, "bench: unit suite only")
    return repo


def env_for(variant: str, work: Path, before: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    (work / variant / "cicd").mkdir(parents=True, exist_ok=True)
    env.update(
        CICD_HOME=str(work / variant / "cicd"),
        PREFECT_HOME=str(work / variant / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    if variant == "before":
        env["PYTHONPATH"] = str(before)
    return env


def one_run(variant: str, repo: Path, env: dict[str, str]) -> float:
    """Wall seconds of one whole ``cicd run``."""
    argv = [sys.executable, "-c", CLI, "run", "pr-validation", "--repo", str(repo), "--json"]
    started = time.perf_counter()
    # Not from this tree's root: `python -c` puts the working directory first on
    # sys.path, which would shadow the before variant's PYTHONPATH.
    proc = subprocess.run(
        argv, env=env, cwd=env["CICD_HOME"], capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    assert report["state"] == "passed", report
    return wall


def server_rss(env: dict[str, str]) -> float:
    record = Path(env["CICD_HOME"], "run-server", "server.json")
    pid = json.loads(record.read_text())["processes"]["server"]["pid"]
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return total / 1024


def stop_after(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-c", CLI, "down"], env=env, cwd=env["CICD_HOME"], capture_output=True
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cicd-bench-embedded-"))
    repo = sample(work)
    envs = {v: env_for(v, work, args.before.resolve()) for v in ("before", "after")}
    times: dict[str, list[float]] = {"before": [], "after": []}
    first: dict[str, float] = {}
    try:
        for variant in ("before", "after"):
            first[variant] = one_run(variant, repo, envs[variant])
        for _ in range(args.runs):
            for variant in ("before", "after"):
                times[variant].append(one_run(variant, repo, envs[variant]))
        after_server = server_rss(envs["after"])
    finally:
        stop_after(envs["after"])
    medians = {v: statistics.median(t) for v, t in times.items()}
    load = os.getloadavg()
    print(
        f"{platform.node()} {os.cpu_count()} cores, load {load[0]:.1f}, "
        f"{time.strftime('%F %H:%M UTC', time.gmtime())}"
    )
    print("| variant | first run (fresh homes) | median of runs | min | max |")
    print("|---|---:|---:|---:|---:|")
    for variant in ("before", "after"):
        t = times[variant]
        print(
            f"| {variant} | {first[variant]:.1f} s | **{medians[variant]:.1f} s** "
            f"| {min(t):.1f} s | {max(t):.1f} s |"
        )
    print(
        f"after / before: {medians['after'] / medians['before']:.2f}; "
        f"the local server's RSS {after_server:.0f} MiB"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "embedded_server.json").write_text(
        json.dumps(
            {
                "first": first,
                "runs": times,
                "medians": medians,
                "load": load,
                "server_rss_mib": after_server,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
