"""Peak memory of a job step that prints 200 MB, before and after bounded output.

Each measurement is a fresh process that imports ``cicd`` from a given source
tree (this one, or a git revision unpacked with ``git archive``), registers a
secret (a run with a service password masks every line) and runs one step
through ``cicd.command.run`` with a log file, as ``tasks.job.run_step`` does.
Where the tree has it, the step's output also goes line by line to the live
step log of ``tasks.job.run_step`` (``tasks.step_logs``). The child step writes
``--megabytes`` MB of output, either as 100-byte lines or as one line without a
newline. The process reports its own peak resident set (``VmHWM`` in /proc/self/status, proc(5):
https://man7.org/linux/man-pages/man5/proc_pid_status.5.html), which
counts the whole output only if it was ever held in memory.

    .venv/bin/python bench/output_memory.py [--before REV] [--megabytes 200]
        [--cicd-run [--shape lines|one-line]]

``--cicd-run`` measures the whole ``cicd run pr-validation`` process instead, on a
copy of the sample project whose one unit test prints the output and fails (pytest
then prints what it captured: the whole output reaches the job), with a temporary
Prefect server; its peak is read from /proc while it runs (``VmHWM`` only grows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The step: N MB of output, as lines (``lines``) or a single line (``one-line``).
PRINTER = """
import sys
mb, shape = int(sys.argv[1]), sys.argv[2]
out = sys.stdout.buffer
chunk = (b"x" * 99 + b"\\n") * 10_000 if shape == "lines" else b"y" * 1_000_000
for _ in range(mb):
    out.write(chunk)
out.flush()
"""

MEASURE = """
import json, logging, sys, time
from pathlib import Path
from cicd import command, masking
masking.register(["s3cret-password-for-bench"])
log = Path(sys.argv[1])
argv = [sys.executable, "-c", sys.argv[2], sys.argv[3], sys.argv[4]]
options = {}
try:  # the live step log of tasks.job.run_step, where there is one
    from tasks.step_logs import StepLog
except ImportError:
    StepLog = None
if StepLog is not None:
    logger = logging.getLogger("bench")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.NullHandler())
    live = StepLog("job", "step", "printer", log, logger)
    options["on_line"] = live.line
started = time.monotonic()
result = command.run(argv, log_path=log, **options)
if StepLog is not None:
    live.ended(result)
took = time.monotonic() - started
status = Path("/proc/self/status").read_text()
hwm = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
print(json.dumps({"module": command.__file__, "live_log": StepLog is not None,
                  "peak_rss_mb": round(hwm / 1024, 1),
                  "seconds": round(took, 2), "returncode": result.returncode,
                  "tail_chars": len(result.output),
                  "log_mb": round(log.stat().st_size / 2**20, 1)}))
"""


def unpack(rev: str, into: Path, whole: bool = False) -> Path:
    """The ``cicd`` package (``whole``: every package) as it was at ``rev``
    (``git archive``, nothing checked out)."""
    archive = into / "tree.tar"
    packages = ["cicd", "flows", "tasks", "deployments"] if whole else ["cicd"]
    with archive.open("wb") as handle:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, *packages], stdout=handle, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def measure(tree: Path, megabytes: int, shape: str, scratch: Path) -> dict[str, object]:
    log = scratch / f"step-{shape}.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(
        # -S: no site-packages, so the editable install of this checkout cannot
        # shadow the tree on PYTHONPATH (cicd.command needs the standard library only).
        [sys.executable, "-S", "-c", MEASURE, str(log), PRINTER, str(megabytes), shape],
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "CICD_SANDBOX": "off"},
        # Not this checkout's directory: ``-c`` puts the working directory first on sys.path.
        cwd=scratch,
        capture_output=True,
        text=True,
        check=True,
    )
    log.unlink(missing_ok=True)
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


FLOOD_TEST = """import sys


def test_floods_its_output() -> None:
    chunk = {chunk}
    for _ in range({count}):
        sys.stdout.write(chunk)
    assert False, "flooded"
"""

FLOOD_CONFIG = """version: 1
environment: {extras: [dev]}
tests:
  unit: {paths: [tests/unit/test_flood.py], timeout: 1800}
pipelines:
  pr-validation: {suites: [unit]}
"""


def flood_repo(root: Path, megabytes: int, shape: str) -> Path:
    sys.path.insert(0, str(ROOT))
    from cicd.sample import commit_all, create_sample_repo

    repo = create_sample_repo(root / "flood")
    if shape == "lines":
        chunk, count = '"x" * 99 + "\\n"', megabytes * 10_000
    else:
        chunk, count = '"y" * 1_000_000', megabytes
    (repo / "tests" / "unit" / "test_flood.py").write_text(
        FLOOD_TEST.format(chunk=chunk, count=count)
    )
    (repo / "cicd.yaml").write_text(FLOOD_CONFIG)
    commit_all(repo, "test: flood")
    return repo


def measure_cicd_run(tree: Path, repo: Path, home: Path) -> dict[str, object]:
    import os

    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "CICD_"))
    }
    env.update(
        PYTHONPATH=str(tree),
        CICD_HOME=str(home / "cicd"),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    since_records = prefect_logs(home / "prefect" / "prefect.db", (0, 0))
    entry = "import sys; from cicd.cli.main import main; sys.exit(main())"
    argv = [sys.executable, "-c", entry, "run", "pr-validation", "--repo", str(repo), "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    peak_kb = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            text = status.read_text()
        except OSError:
            break
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak_kb = max(peak_kb, int(line.split()[1]))
        time.sleep(0.1)
    out, _ = proc.communicate()
    took = time.monotonic() - started
    records, log_bytes = prefect_logs(home / "prefect" / "prefect.db", since_records)
    # This run's log: the newest (both trees share the home).
    logs = sorted(
        (home / "cicd" / "runs").glob("pr-validation-*/logs/unit.log"),
        key=lambda path: path.stat().st_mtime,
    )
    report = json.loads(out) if out.strip().startswith("{") else {}
    return {
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "seconds": round(took, 1),
        "exit": proc.returncode,
        "unit": next((j.get("state") for j in report.get("jobs", [])), None),
        "job_log_mb": round(logs[-1].stat().st_size / 2**20, 1) if logs else None,
        "prefect_log_records": records,
        "prefect_log_mb": round(log_bytes / 2**20, 2),
    }


def prefect_logs(database: Path, before: tuple[int, int]) -> tuple[int, int]:
    """Log records in the temporary server's SQLite database, and their bytes,
    beyond ``before`` (the two trees share one home)."""
    import sqlite3

    if not database.exists():
        return before
    with sqlite3.connect(database) as db:
        count, size = db.execute(
            "SELECT count(*), coalesce(sum(length(message)), 0) FROM log"
        ).fetchone()
    return count - before[0], size - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision of the old code path (e.g. main)")
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--cicd-run", action="store_true", help="measure `cicd run` as a whole")
    parser.add_argument("--shape", choices=("lines", "one-line"), default="lines")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cicd-bench-output-") as tmp:
        scratch = Path(tmp)
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": unpack(args.before, scratch, args.cicd_run), **trees}
        if args.cicd_run:
            repo = flood_repo(scratch, args.megabytes, args.shape)
            for label, tree in trees.items():
                # One home for both: the environment is built once, by the first.
                row = {"code": label, "shape": args.shape, **measure_cicd_run(tree, repo, scratch)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for label, tree in trees.items() if not args.cicd_run else ():
            for shape in ("lines", "one-line"):
                row = {
                    "code": label,
                    "shape": shape,
                    **measure(tree, args.megabytes, shape, scratch),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = ROOT / "bench" / "results" / f"output_memory-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
