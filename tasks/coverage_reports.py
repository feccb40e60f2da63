"""coverage.py's reports for a test job, in one process: combine, JSON, the
terminal report and HTML.

Not imported by cicd-flows: the test job copies this file into its reports
directory (where the job's box lets a step read it, cicd/sandbox_step.py) and
runs it with the project's interpreter, so it uses the project's coverage.py
and the standard library only. Each ``coverage <command>`` is an interpreter
of its own that imports coverage and reads the data again: on pytest-dev/pluggy
``coverage json`` and ``coverage report`` took 0.67 s and 0.53 s after a 3.4 s
pytest run (bench/README.md, "Public projects against their own CI"). Here
they are calls of coverage's API (https://coverage.readthedocs.io/en/latest/api_coverage.html)
made as ``coverage/cmdline.py`` makes them:

- ``--combine``: ``Coverage.combine`` of the parallel data files beside the
  data file, after ``load()`` with ``--append`` (the main process's own data);
- the JSON report, then the terminal report as ``coverage report`` prints it
  (the project's ``show_missing``, ``skip_covered``, ``precision``...), then HTML;
- ``fail_under``: the option when given, else the project's; a total under it
  exits 2, coverage's own status for it
  (https://coverage.readthedocs.io/en/latest/cmd.html#cmd-report).

Exit status: 0, 2 under ``fail_under``, 1 coverage refused (its message on
stderr, e.g. "No data to report.").

``--run ARGS...``: first ``coverage run ARGS`` in this very process, as
``coverage/cmdline.py``'s ``main`` runs it (its status is this script's exit
status), then the reports. Each interpreter of its own costs its start and
``import coverage`` again (0.13 s of the 0.16 s the sample's reports took as a
process of their own). Their outcome goes to ``--status`` (JSON: returncode,
duration, output) instead of the exit status and stdout, so the test command's
output and status are the test command's alone; parallel data files beside the
data file (``parallel = true``, subprocesses) are combined first, as
``coverage combine --append`` would. A status file not written (the tests ended
the interpreter, ``os._exit``) or saying ``in_process_failed`` leaves the
reports to a process of their own (``tasks/coverage_run.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import TextIO

FAIL_UNDER = 2


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    run_args = None
    if "--run" in arguments:
        at = arguments.index("--run")
        arguments, run_args = arguments[:at], arguments[at + 1 :]
    parser = argparse.ArgumentParser(prog="coverage_reports")
    parser.add_argument("--data-file", required=True)
    parser.add_argument("--json", required=True, dest="json_path")
    parser.add_argument("--combine", action="store_true")
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--html", dest="html_dir")
    parser.add_argument("--fail-under", type=float)
    parser.add_argument("--status")
    args = parser.parse_args(arguments)
    if run_args is not None:
        return run_then_report(args, run_args)
    try:
        return reports(args, sys.stdout, sys.stderr)
    except Exception as exc:  # the step's failure, with the reason in its output
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def run_then_report(args: argparse.Namespace, run_args: list[str]) -> int:
    from coverage.cmdline import main as coverage_main

    status = coverage_main(["run", *run_args])
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    data = args.data_file
    directory, name = os.path.split(data)
    parallel = [entry for entry in os.listdir(directory or ".") if entry.startswith(name + ".")]
    args.combine, args.append = bool(parallel), bool(parallel) and os.path.isfile(data)
    output = io.StringIO()
    failed = False
    no_data = not parallel and not os.path.isfile(data)
    if no_data:
        code = 1
        output.write("No data to report.\n")
    else:
        try:
            code = reports(args, output, output)
        except BaseException as exc:  # the tests may have left this interpreter unfit
            code, failed = 1, True
            output.write(f"{type(exc).__name__}: {exc}\n")
    record = {
        "returncode": code,
        "duration": time.monotonic() - started,
        "output": output.getvalue(),
        "in_process_failed": failed,
        "no_data": no_data,
    }
    staged = f"{args.status}.{os.getpid()}"
    with open(staged, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(staged, args.status)
    # What sys.exit(status) would make of it, as `python -m coverage` exits.
    if status is None or isinstance(status, int):
        return status or 0
    print(status, file=sys.stderr)
    return 1


def reports(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import coverage
    from coverage.results import should_fail_under

    try:
        cov = coverage.Coverage(data_file=args.data_file)
        if args.combine:
            if args.append:
                cov.load()
            cov.combine(strict=True)
            cov.save()
        cov.load()
        if args.fail_under is not None:
            cov.set_option("report:fail_under", args.fail_under)
        total = cov.json_report(outfile=args.json_path)
        cov.report(file=out)
        if args.html_dir:
            cov.html_report(directory=args.html_dir)
    except coverage.CoverageException as exc:  # its messages, as its CLI prints them
        print(exc, file=err)
        return 1
    fail_under = cov.get_option("report:fail_under")
    precision = cov.get_option("report:precision")
    # Python 3.8+ (the projects' interpreters): no `int | float` in isinstance.
    under = isinstance(fail_under, (int, float)) and isinstance(precision, int)
    if under and should_fail_under(total, fail_under, precision):
        shown = f"total of {total:.{precision}f} is less than fail-under={fail_under:.{precision}f}"
        print(f"Coverage failure: {shown}", file=out)
        return FAIL_UNDER
    return 0


if __name__ == "__main__":
    sys.exit(main())
