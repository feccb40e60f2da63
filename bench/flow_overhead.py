"""The pr-validation flow's own fixed costs, before and after a change, in one run.

    .venv/bin/python bench/flow_overhead.py --before REV [--rounds 7]

Two children, each a long-lived Python process that imports one version of
cicd-flows: ``before`` a ``git worktree`` of REV (e.g. the commit a change
started from), ``after`` this checkout. Each runs the flow in-process, as
``cicd run`` does, on its own copy of the sample without the Neo4j job (the
variant of bench/cli_vs_shell.py), against one Prefect server that this script
starts on a free port with a scratch ``PREFECT_HOME``. Rounds alternate which
side goes first; each round is, per side, a cold run (a new commit: nothing
cached, environment warm) then a cached rerun of that commit. Measured from
progress events and clock readings in the child (``time.perf_counter``):

- ``first_job``: flow call -> the first job starts (cold) or ends (cached);
- ``last_job_to_return``: the last job's end -> the flow's function returns;
- ``engine_end``: the function returns -> the flow call returns (Prefect's
  final state and its heartbeat thread joined);
- ``flow``: the whole flow call;
- cold runs: ``slowest_job`` (its duration as the job reports it: its steps)
  and ``flow_minus_slowest_job``, the flow's overhead whatever the load makes
  of the steps.

Medians per side and the after/before ratios are printed as Markdown and
written to bench/results/flow_overhead.json. A shared 2-core machine: read
medians and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
METRICS = (
    "first_job",
    "last_job_to_return",
    "engine_end",
    "flow",
    "slowest_job",
    "flow_minus_slowest_job",
)


def child(root: Path, work: Path) -> None:
    """Serve ``cold`` / ``cached`` lines on stdin with one JSON line each."""
    sys.path.insert(0, str(root))
    import flows
    from cicd.sample import commit_all, create_sample_repo
    from flows.pr_validation import pr_validation
    from tasks import progress

    try:  # the versions that publish artifacts from threads of their own
        from tasks import deferred
    except ImportError:
        deferred = None
    assert Path(flows.__file__).is_relative_to(root), flows.__file__
    repo = create_sample_repo(work / "agentkit")
    config = (repo / "cicd.yaml").read_text().replace("suites: [unit, framework]", "suites: [unit]")
    (repo / "cicd.yaml").write_text(config)
    commit_all(repo, "bench: no neo4j job")

    marks: dict[str, float] = {}
    events: list[tuple[float, Any]] = []
    body = pr_validation.fn

    @functools.wraps(body)
    def timed_body(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        finally:
            marks["returned"] = time.perf_counter()

    pr_validation.fn = timed_body
    progress.add_listener(lambda event: events.append((time.perf_counter(), event)))

    def run(kind: str) -> dict[str, float]:
        if kind == "cold":
            changed = repo / "src" / "agentkit" / "bench_round.py"
            changed.write_text(f'ROUND = "{uuid.uuid4().hex}"\n')  # as black writes it
            commit_all(repo, "bench: a new commit")
        events.clear()
        started = time.perf_counter()
        report = pr_validation(repo=str(repo), ref="HEAD")
        ended = time.perf_counter()
        if deferred is not None:  # artifacts still under way: not timed, not left to the next run
            assert deferred.wait() == [], "artifacts not published"
        states = {job["state"] for job in report["jobs"]}
        assert states == ({"passed"} if kind == "cold" else {"cached"}), report
        starts = [at for at, e in events if isinstance(e, progress.JobStarted)]
        first_end: dict[str, float] = {}
        for at, e in events:
            if isinstance(e, progress.JobFinished):
                first_end.setdefault(e.job, at)
        first = min(starts) if starts else min(first_end.values())
        measured = {
            "first_job": first - started,
            "last_job_to_return": marks["returned"] - max(first_end.values()),
            "engine_end": ended - marks["returned"],
            "flow": ended - started,
        }
        if kind == "cold":
            # The jobs' own time (their steps, as each job reports it): the rest of
            # the flow is overhead, whatever the load makes of the steps.
            slowest = max(job["duration"] for job in report["jobs"])
            measured["slowest_job"] = slowest
            measured["flow_minus_slowest_job"] = measured["flow"] - slowest
        return measured

    run("cold")  # warm-up: imports, the environment, the mirror
    run("cached")
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(run(line.strip())), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, home: Path) -> subprocess.Popen[bytes]:
    log = (home / "server.log").open("wb")
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("Prefect server did not start")


def start_child(root: Path, work: Path, environ: dict[str, str]) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(work)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"{root}: the child did not start ({line!r})")
    return proc


def ask(proc: subprocess.Popen[str], kind: str) -> dict[str, float]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(kind + "\n")
    proc.stdin.flush()
    return dict(json.loads(proc.stdout.readline()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="the git revision to compare with (required)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    if not args.before:
        parser.error("--before REV is required")

    scratch = Path(tempfile.mkdtemp(prefix="cicd-flow-overhead-"))
    before = scratch / "before-code"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(before),
         args.before], check=True,
    )  # fmt: skip
    port = free_port()
    (scratch / "prefect").mkdir()
    environ = {
        **os.environ,
        "PREFECT_HOME": str(scratch / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOCAL_STORAGE_PATH": str(scratch / "storage"),
    }
    # Environments and tool environments stay in the developer's CICD_HOME when
    # set (the bench measures runs, not installs); each side its own sample.
    environ.setdefault("CICD_HOME", str(scratch / "home"))
    server = start_server(port, scratch / "prefect")
    children: dict[str, subprocess.Popen[str]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for side, root in (("before", before), ("after", ROOT)):
            (scratch / f"{side}-work").mkdir()
            children[side] = start_child(root, scratch / f"{side}-work", environ)
        for round_no in range(args.rounds):
            order = ["before", "after"] if round_no % 2 == 0 else ["after", "before"]
            for side in order:
                for kind in ("cold", "cached"):
                    measured = ask(children[side], kind)
                    series = samples.setdefault(f"{side} {kind}", {})
                    for metric, value in measured.items():
                        series.setdefault(metric, []).append(value)
                    print(f"round {round_no + 1} {side} {kind}: {measured}", file=sys.stderr)
    finally:
        for proc in children.values():
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                       check=False)  # fmt: skip
    medians = {
        key: {metric: statistics.median(values) for metric, values in metrics.items()}
        for key, metrics in samples.items()
    }
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before": args.before,
        "rounds": args.rounds,
        "samples": samples,
        "medians": medians,
    }
    out = ROOT / "bench" / "results" / "flow_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("| run | metric | before (s) | after (s) | after/before |")
    print("|---|---|---:|---:|---:|")
    for kind in ("cold", "cached"):
        for metric in [m for m in METRICS if m in medians[f"after {kind}"]]:
            old, new = medians[f"before {kind}"][metric], medians[f"after {kind}"][metric]
            print(f"| {kind} | {metric} | {old:.3f} | {new:.3f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
