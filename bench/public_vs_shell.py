"""``cicd run pr-validation`` on public projects against their own CI as a shell script.

Issue 15, must-show 2: on hukkin/tomli and pytest-dev/pluggy the pipeline at
most 0.8x the sequential shell script of the project's own CI commands
(``bench/public/<project>_ci.sh``). Whole processes as a user runs them, on
the embedded default (the local server ``cicd run`` starts once and reuses),
interleaved pairs (which side goes first alternates), a new commit per round
(``BENCH_ROUND.txt`` on a throwaway branch, a tracked file, so the source
fingerprint changes and nothing is served from the cache), medians.

Installation is timed on neither side: the pipeline's environments are built
by a first run before the rounds; the shell's venv is made once with uv from
exactly the packages (and versions) of the pipeline's project and tool
environments, so both run the same tools. Neither installs the project: the
checkout's ``src`` is on ``PYTHONPATH`` on both sides.

The breakdown per pipeline run comes from its ``--json``: each job's duration
and steps, the flow's duration, and ``fixed_s`` = wall - the longest job chain
(pr-validation submits every job at once, so the chain is the longest job).

    git clone -q /work/.mirror/hukkin+tomli/repo <dir>/tomli
    git clone -q /work/.mirror/pytest-dev+pluggy/repo <dir>/pluggy
    .venv/bin/python bench/public_vs_shell.py <dir>/tomli <dir>/pluggy [--runs 5]

The clones get a branch ``bench-round`` (deleted at the end). Writes
bench/results/public_vs_shell.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BRANCH = "bench-round"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def new_commit(repo: Path, base: str, label: str) -> str:
    """A commit on ``bench-round`` whose tree differs from every earlier round's."""
    git(repo, "checkout", "--quiet", "-B", BRANCH, base)
    (repo / "BENCH_ROUND.txt").write_text(f"{label}\n")
    git(repo, "add", "BENCH_ROUND.txt")
    git(
        repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost",
        "commit", "--quiet", "-m", f"bench: round {label}",
    )  # fmt: skip
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", base)
    return sha


def cicd_argv(repo: Path, ref: str) -> list[str]:
    return [
        str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref,
        "--quiet", "--json",
    ]  # fmt: skip


def run_pipeline(repo: Path, ref: str) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(cicd_argv(repo, ref), capture_output=True, text=True)
    wall = time.perf_counter() - started
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    if done.returncode != 0:
        raise RuntimeError(f"cicd run exited {done.returncode}:\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")  # fmt: skip
    jobs = {
        job["name"]: {
            "state": job["state"],
            "duration_s": job["duration"],
            "steps": {s["name"]: s["duration"] for s in job.get("steps", [])},
            **{k: job[k] for k in ("passed", "failed", "coverage_percent") if k in job},
        }
        for job in report.get("jobs", [])
    }
    envs = [
        Path(command.split()[0]).parent.parent
        for job in report.get("jobs", [])
        for command in job.get("details", {}).get("commands", {}).values()
    ]
    chain = max((j["duration_s"] for j in jobs.values()), default=0.0)
    return {
        "wall_s": round(wall, 3),
        "flow_s": report.get("duration"),
        "longest_job_s": chain,
        "fixed_s": round(wall - chain, 3),
        "jobs": jobs,
        "environments": envs,
        "states": sorted({job["state"] for job in jobs.values()}),
    }


def run_shell(script: Path, repo: Path, ref: str, venv: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        ["sh", str(script), str(repo), ref, str(venv)], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} exited {done.returncode}:\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")  # fmt: skip
    return {"wall_s": round(wall, 3)}


def environments(first: dict[str, Any]) -> list[Path]:
    """The pipeline's project and tool environments, from the commands its quality
    job reports (``details.commands``: each starts with an environment's python)."""
    found = sorted(set(first["environments"]), key=lambda p: p.name.startswith("tools-"))
    if not found or found[0].name.startswith("tools-"):
        raise SystemExit(f"no project environment in the quality job's commands: {found}")
    return found


def frozen(env: Path) -> list[str]:
    """``name==version`` of every distribution in ``env``'s own site-packages (not
    its base interpreter's)."""
    sites = [str(p) for p in env.glob("lib/python*/site-packages")]
    code = (
        "import importlib.metadata as m, sys;"
        "print('\\n'.join(sorted({d.metadata['Name'] + '==' + d.version"
        " for d in m.distributions(path=sys.argv[1:])})))"
    )
    out = subprocess.run([str(env / "bin" / "python"), "-c", code, *sites],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return [line for line in out.stdout.splitlines() if line and not line.startswith("pip==")]


def shell_venv(where: Path, sources: list[Path]) -> Path:
    """One venv for the shell side with the pipeline environments' exact packages."""
    venv = where / "shell-venv"
    python = sources[0] / "bin" / "python"
    uv = BIN / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", str(python), str(venv)], check=True)
    wanted = sorted({req for env in sources for req in frozen(env)})
    # Compiled at install as pip compiles, and as the pipeline's environments
    # are (tasks/environments.py): where PYTHONDONTWRITEBYTECODE is set (this
    # machine) a venv without .pyc files compiles its imports on every run.
    subprocess.run([str(uv), "pip", "install", "--quiet", "--compile-bytecode",
                    "--python", str(venv / "bin/python"), *wanted], check=True)  # fmt: skip
    return venv


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def bench_project(repo: Path, runs: int, scratch: Path) -> dict[str, Any]:
    name = repo.resolve().name
    script = ROOT / "bench" / "public" / f"{name}_ci.sh"
    if not script.is_file():
        raise SystemExit(f"no shell script for {name}: {script} does not exist")
    base = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    # Unique to this invocation: a tree of an earlier invocation would be served
    # from the cache.
    nonce = uuid.uuid4().hex[:8]
    first_ref = new_commit(repo, base, f"{name}-{nonce}-setup")
    first = run_pipeline(repo, first_ref)  # builds the environments, starts the server
    sources = environments(first)
    venv = shell_venv(scratch / name, sources)
    run_shell(script, repo, first_ref, venv)  # warm-up: bytecode, page cache
    shell, pipeline = [], []
    for i in range(runs):
        ref = new_commit(repo, base, f"{name}-{nonce}-{i}")
        for side in ("shell", "pipeline") if i % 2 == 0 else ("pipeline", "shell"):
            if side == "shell":
                shell.append(run_shell(script, repo, ref, venv))
            else:
                pipeline.append(run_pipeline(repo, ref))
                if "cached" in pipeline[-1]["states"]:
                    raise SystemExit(f"{name} round {i + 1}: a job was served from the cache")
        print(f"{name} round {i + 1}: shell {shell[-1]['wall_s']} s, pipeline "
              f"{pipeline[-1]['wall_s']} s", file=sys.stderr)  # fmt: skip
    git(repo, "branch", "--quiet", "-D", BRANCH)
    job_names = sorted(pipeline[0]["jobs"])
    return {
        "commit": git(repo, "rev-parse", base),
        "script": str(script.relative_to(ROOT)),
        "environments": [p.name for p in sources],
        "shell_s": [r["wall_s"] for r in shell],
        "pipeline_s": [r["wall_s"] for r in pipeline],
        "shell_median_s": med([r["wall_s"] for r in shell]),
        "pipeline_median_s": med([r["wall_s"] for r in pipeline]),
        "ratio_pipeline_to_shell": round(
            med([r["wall_s"] for r in pipeline]) / med([r["wall_s"] for r in shell]), 3
        ),
        "breakdown_median_s": {
            "flow": med([r["flow_s"] for r in pipeline]),
            "longest_job": med([r["longest_job_s"] for r in pipeline]),
            "fixed": med([r["fixed_s"] for r in pipeline]),
            **{f"job {j}": med([r["jobs"][j]["duration_s"] for r in pipeline]) for j in job_names},
        },
        "pipeline_runs": [{k: v for k, v in r.items() if k != "environments"} for r in pipeline],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("repos", type=Path, nargs="+", help="clones of the projects")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if "CICD_HOME" not in os.environ:
        raise SystemExit("CICD_HOME must be set (the pipeline's environments are found there)")
    scratch = Path(tempfile.mkdtemp(prefix="cicd-bench-public-"))
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg()[0],
        "projects": {},
    }
    try:
        for repo in args.repos:
            results["projects"][repo.resolve().name] = bench_project(repo, args.runs, scratch)
    finally:
        results["load_after"] = os.getloadavg()[0]
        shutil.rmtree(scratch, ignore_errors=True)
    out = ROOT / "bench" / "results" / "public_vs_shell.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
