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
"""

from __future__ import annotations

import argparse
import sys

FAIL_UNDER = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coverage_reports")
    parser.add_argument("--data-file", required=True)
    parser.add_argument("--json", required=True, dest="json_path")
    parser.add_argument("--combine", action="store_true")
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--html", dest="html_dir")
    parser.add_argument("--fail-under", type=float)
    args = parser.parse_args(argv)

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
        cov.report(file=sys.stdout)
        if args.html_dir:
            cov.html_report(directory=args.html_dir)
    except Exception as exc:  # coverage's errors are its messages, as its CLI prints them
        print(exc, file=sys.stderr)
        return 1
    fail_under = cov.get_option("report:fail_under")
    precision = cov.get_option("report:precision")
    # Python 3.8+ (the projects' interpreters): no `int | float` in isinstance.
    under = isinstance(fail_under, (int, float)) and isinstance(precision, int)
    if under and should_fail_under(total, fail_under, precision):
        shown = f"total of {total:.{precision}f} is less than fail-under={fail_under:.{precision}f}"
        print(f"Coverage failure: {shown}")
        return FAIL_UNDER
    return 0


if __name__ == "__main__":
    sys.exit(main())
