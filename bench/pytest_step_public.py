"""The unit job's pytest step on a public project against the project's own test
command run directly (issue 15, Build item 4: within 1.15x).

    git clone <tomli mirror> /tmp/tomli
    .venv/bin/python bench/pytest_step_public.py /tmp/tomli \\
        --own "coverage run -m unittest" [--rounds 7]

Three sides, interleaved round by round (the order rotates so none always runs
warmest), medians; each in the job's own environment (``ensure_environment``
of the detected configuration, built once and not timed) with the job's
variables (``PYTHONPATH`` on the checkout):

- ``job``: the test step of ``tasks.testing.run_suite`` (pytest, or unittest
  for a plain unittest suite, ``cicd/unittest_detection.py``) (its box, output
  followed by ``tasks.step_logs``, JUnit written), the step's own duration;
- ``argv``: the very argv the step runs (``tasks.testing.pytest_argv``), with
  ``subprocess`` and its output to a file: the box and log-following apart;
- ``own``: the project's own command (``--own``, split with ``shlex``, its
  first word resolved in the environment's ``bin``), as its CI runs it.

Writes ``bench/results/pytest_step_<name>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cicd import paths  # noqa: E402
from cicd.config import load_config  # noqa: E402
from tasks.environments import Environment, ensure_environment, tool_packages  # noqa: E402
from tasks.job import Deadline  # noqa: E402
from tasks.testing import install_unittest_runner, pytest_argv, run_suite  # noqa: E402


def timed_process(argv: list[str], cwd: Path, environ: dict[str, str]) -> float:
    with tempfile.TemporaryFile() as sink:
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=environ, stdout=sink, stderr=sink, check=False)
        took = time.perf_counter() - started
        if done.returncode != 0:
            sink.seek(0)
            tail = sink.read()[-3000:].decode(errors="replace")
            raise RuntimeError(f"{argv} exited {done.returncode}:\n{tail}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout", type=Path)
    parser.add_argument("--own", required=True, help="the project's own test command")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    name = args.checkout.resolve().name
    ws = paths.workspaces() / f"bench-step-{name}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(args.checkout, ws, symlinks=True)
    reports = paths.runs() / f"bench-step-{ws.name}" / "reports"
    reports.mkdir(parents=True)
    try:
        config = load_config(ws)
        suite_name = next(iter(config.tests))
        suite = config.tests[suite_name]
        packages = tool_packages(config, [suite])
        env: Environment = ensure_environment(ws, config.environment, packages).for_workspace(ws)
        environ = env.environ(dict(suite.env))
        own_argv = shlex.split(args.own)
        own_argv[0] = str(env.python.parent / own_argv[0])
        data = reports / ".coverage-direct"

        def job() -> float:
            result = run_suite(suite_name, ws, env, suite, reports, Deadline(900))
            step = next(s for s in result.steps if s.name == suite.runner)
            if not result.state.ok:
                raise RuntimeError(f"job: {result.reason}\n{step.output_tail}")
            return step.duration

        def argv() -> float:
            junit = reports / "junit-direct.xml"
            install_unittest_runner(reports)  # where a unittest suite's argv names it
            command = pytest_argv(env.python, suite, junit, coverage=bool(suite.coverage))
            return timed_process(command, ws, {**environ, "COVERAGE_FILE": str(data)})

        def own() -> float:
            return timed_process(own_argv, ws, {**environ, "COVERAGE_FILE": str(data)})

        sides: list[tuple[str, Callable[[], float]]] = [("job", job), ("argv", argv), ("own", own)]
        for _, measure in sides:
            measure()  # warm-up: bytecode, page cache
        samples: dict[str, list[float]] = {side: [] for side, _ in sides}
        load = [os.getloadavg()[0]]
        for round_no in range(args.rounds):
            shift = round_no % len(sides)
            for side, measure in sides[shift:] + sides[:shift]:
                samples[side].append(round(measure(), 3))
            load.append(os.getloadavg()[0])
            print(f"round {round_no + 1}: {samples}", file=sys.stderr)
        medians = {side: round(statistics.median(v), 3) for side, v in samples.items()}
        summary = {
            "project": name,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}",
            "load_1min": [round(x, 2) for x in load],
            "sandbox": os.environ.get("CICD_SANDBOX", "auto"),
            "job_argv": pytest_argv(
                env.python, suite, Path("junit.xml"), coverage=bool(suite.coverage)
            ),
            "own_argv": own_argv,
            "rounds": args.rounds,
            "samples_s": samples,
            "median_s": medians,
            "ratio_job_to_own": round(medians["job"] / medians["own"], 3),
            "ratio_argv_to_own": round(medians["argv"] / medians["own"], 3),
            "ratio_job_to_argv": round(medians["job"] / medians["argv"], 3),
        }
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(reports.parent, ignore_errors=True)
    out = ROOT / "bench" / "results" / f"pytest_step_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
