"""``cicd run PIPELINE``: run a pipeline locally and report like a CI job.

The pipelines, their options and their flows come from ``flows/registry.py``.
Exit codes are those of ``cicd/cli/error_handler.py``: 0 the pipeline passed,
1 it failed, 2 bad input, 3 an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from cicd.cli.error_handler import EXIT_FAILED, EXIT_PASSED, Outcome
from flows.registry import PIPELINES, Pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pipelines = parser.add_subparsers(dest="pipeline", metavar="PIPELINE", required=True)
    for entry in PIPELINES.values():
        add_pipeline(pipelines.add_parser(entry.name, help=entry.help), entry)


def add_pipeline(parser: argparse.ArgumentParser, entry: Pipeline) -> None:
    parser.set_defaults(pipeline=entry.name)
    if entry.takes_repo:
        parser.add_argument(
            "--repo",
            help="path or URL of the target git repository (default: the embedded sample project)",
        )
        parser.add_argument("--ref", default="HEAD", help=f"{entry.ref_help} (default: HEAD)")
    for option in entry.options:
        if option.switch:
            parser.add_argument(
                option.flag, dest=option.parameter, action="store_true", help=option.help
            )
        else:
            parser.add_argument(
                option.flag, dest=option.parameter, choices=option.choices, help=option.help
            )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with the results"
    )


def _print_human(report: dict[str, Any]) -> None:
    if "jobs" not in report:
        print(report.get("markdown") or json.dumps(report, indent=2))
        return
    print(
        f"{report['flow']}: {report['state']} in {report['duration']:.1f}s "
        f"({report.get('repo')}@{report.get('ref')} {str(report.get('commit', ''))[:12]})"
    )
    for job in report["jobs"]:
        counts = ""
        if "passed" in job:
            counts = f"  {job['passed']} passed, {job['failed']} failed, {job['skipped']} skipped"
            if job.get("errors"):
                counts += f", {job['errors']} errors"
        if "coverage_percent" in job:
            counts += f", coverage {job['coverage_percent']}%"
        reason = f"  ({job['reason']})" if job.get("reason") else ""
        print(f"  {job['name']:<14} {job['state']:<10} {job['duration']:7.1f}s{counts}{reason}")
        for failure in job.get("failures", []):
            print(f"      FAILED {failure['name']}: {failure['message']}")


def run(args: argparse.Namespace, outcome: Outcome) -> int:
    """Run the pipeline; a failed pipeline is a report and exit 1, any other
    error goes to the error handler."""
    from cicd.cli.prefect_api import require_api, start_temporary_server, stop_temporary_server
    from cicd.results import PipelineFailed

    entry = PIPELINES[args.pipeline]
    repo = getattr(args, "repo", None)
    if entry.takes_repo and repo is None:
        from cicd.sample import default_sample_repo

        repo = str(default_sample_repo())
    flow = entry.load()
    started = time.monotonic()
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        require_api(api_url)
    else:
        # The temporary server, started one run at a time.
        start_temporary_server()
    try:
        report = flow(**entry.parameters(vars(args), repo))
        code = EXIT_PASSED
    except PipelineFailed as failed:
        report = failed.report.to_json()
        code = EXIT_FAILED
    finally:
        # Ours only (None with PREFECT_API_URL); Prefect's atexit would stop it
        # too, but not before the report is printed.
        stop_temporary_server()
    report = {**report, "flow": entry.name, "duration": round(time.monotonic() - started, 3)}
    if outcome.json_output:
        outcome.print_json(report)
    else:
        _print_human(report)
    return code
