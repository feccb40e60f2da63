"""Benchmark: time from a timed-out job's deadline to its processes being gone.

A job is ``sh -c`` with background children, run with a timeout. For each
round, both variants run once, interleaved (background load on the shared box
hits both alike):

- ``old``: the kill path on main before issue 14 (``old_terminate_group`` and
  the timeout sequence of the old ``command.run``, copied below verbatim). It
  polls ``killpg(pgid, 0)``, which succeeds while the unreaped leader is a
  zombie, so it waits out the whole grace before SIGKILL.
- ``new``: ``cicd.command.run`` as it is now (one kill path that reaps the
  leader and does not count zombies).

Two durations from the deadline (start + timeout) are measured: until the
processes are gone (a watcher thread polls /proc every millisecond: the leader
reaped, every child exited; a zombie child counts as gone, its parent or init
reaps it), and until the call returned (the job can go on). Scenarios:
``term`` (the children honour SIGTERM) and ``ignore-term`` (they ignore it:
SIGKILL after the grace).

    .venv/bin/python bench/kill_latency.py [--runs 7] [--timeout 0.5] [--scenarios term,ignore-term]

Prints a Markdown table and writes JSON to bench/results/kill_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cicd import command  # noqa: E402

SCENARIOS = {
    # Two children and the leader, all honouring SIGTERM.
    "term": "sleep 300 & echo $! >> {f}; sleep 300 & echo $! >> {f}; echo $$ >> {f}; wait",
    # The shell and its child ignore SIGTERM (inherited across exec): SIGKILL after the grace.
    "ignore-term": "trap '' TERM; sleep 300 & echo $! >> {f}; echo $$ >> {f}; wait",
}
PIDS_PER_SCENARIO = {"term": 3, "ignore-term": 2}


# --- OLD ALGORITHM: cicd/command.py on main before issue 14 (f8d267d), verbatim but for
# the "old_" prefix of the names. The baseline, not used by the project. ---------
OLD_TERMINATE_GRACE_SECONDS = 5.0


def old_terminate_group(pgid: int, grace: float = OLD_TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after ``grace``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def old_run_with_timeout(argv: list[str], timeout: float) -> None:
    """The process handling of the old ``command.run`` (output, log and result left out)."""
    with tempfile.TemporaryFile("w+b") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            old_terminate_group(proc.pid)
            proc.wait()
        old_terminate_group(proc.pid, grace=1.0)


# --- END OF OLD ALGORITHM -----------------------------------------------------


def new_run_with_timeout(argv: list[str], timeout: float) -> None:
    result = command.run(argv, timeout=timeout)
    assert result.timed_out, result


VARIANTS: dict[str, Callable[[list[str], float], None]] = {
    "old": old_run_with_timeout,
    "new": new_run_with_timeout,
}


def _live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _watch(pid_file: Path, count: int, seen_gone: list[float], stop: threading.Event) -> None:
    """Record the moment the leader (last pid in the file) is reaped and no child is live."""
    pids: list[int] = []
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            pids = [int(word) for word in pid_file.read_text().split()]
        if len(pids) == count:
            break
        time.sleep(0.001)
    *children, leader = pids
    while not stop.is_set():
        if not Path(f"/proc/{leader}").exists() and not any(_live(pid) for pid in children):
            seen_gone.append(time.monotonic())
            return
        time.sleep(0.001)


def one_job(variant: str, scenario: str, timeout: float, tmp: Path) -> dict[str, float]:
    pid_file = tmp / f"{variant}-{scenario}-{time.monotonic_ns()}.pids"
    argv = ["sh", "-c", SCENARIOS[scenario].format(f=pid_file)]
    seen_gone: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(pid_file, PIDS_PER_SCENARIO[scenario], seen_gone, stop)
    )
    watcher.start()
    start = time.monotonic()
    try:
        VARIANTS[variant](argv, timeout)
        returned = time.monotonic()
        watcher.join(30)
    finally:
        stop.set()
        watcher.join()
    if not seen_gone:
        raise RuntimeError(f"{variant}/{scenario}: processes still there 30 s after the call")
    deadline = start + timeout
    return {"gone_s": seen_gone[0] - deadline, "returned_s": returned - deadline}


def machine() -> dict[str, object]:
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    total = next((line.split()[1] for line in mem.splitlines() if line.startswith("Mem:")), "?")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "mem_total_gib": total,
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--scenarios", default="term,ignore-term", help=f"of {sorted(SCENARIOS)}")
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")

    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {v: [] for v in VARIANTS} for s in scenarios
    }
    with tempfile.TemporaryDirectory(prefix="kill-latency-") as tmp:
        for round_no in range(args.runs):
            for scenario in scenarios:
                for variant in VARIANTS:
                    sample = one_job(variant, scenario, args.timeout, Path(tmp))
                    samples[scenario][variant].append(sample)
                    print(f"round {round_no + 1}/{args.runs} {scenario} {variant}: {sample}",
                          file=sys.stderr)

    rows = []
    for scenario in scenarios:
        for variant in VARIANTS:
            gone = [s["gone_s"] for s in samples[scenario][variant]]
            returned = [s["returned_s"] for s in samples[scenario][variant]]
            rows.append({
                "scenario": scenario, "variant": variant, "runs": len(gone),
                "gone_median_s": statistics.median(gone), "gone_max_s": max(gone),
                "returned_median_s": statistics.median(returned), "returned_max_s": max(returned),
            })
    info = machine()
    load = os.getloadavg()[0]
    print(f"\n{info['date']}, {info['nproc']} cores, {info['mem_total_gib']} GiB, "
          f"load {load:.2f}, timeout {args.timeout}s, grace "
          f"{command.TIMEOUT_GRACE_SECONDS}s, {args.runs} runs\n")
    print("| scenario | variant | deadline -> gone, median | max "
          "| deadline -> returned, median | max |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['scenario']} | {row['variant']} | {row['gone_median_s'] * 1000:.0f} ms | "
              f"{row['gone_max_s'] * 1000:.0f} ms | {row['returned_median_s'] * 1000:.0f} ms | "
              f"{row['returned_max_s'] * 1000:.0f} ms |")
    out = ROOT / "bench" / "results" / "kill_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "timeout_s": args.timeout, "rows": rows,
                               "samples": samples}, indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
