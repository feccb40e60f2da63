"""``cicd run FLOW``: run a pipeline locally and report like a CI job.

Exit codes: 0 the pipeline passed, 1 it failed, 2 bad input (unknown repo or
ref, invalid configuration) with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from cicd.errors import BadInput, CicdError
from cicd.results import PipelineFailed

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


FLOW_NAMES = ("pr-validation", "integration", "nightly", "release", "cost-report")


def _flow(name: str) -> Callable[..., dict[str, Any]]:
    # Imported lazily: importing the flows imports Prefect (about a second).
    if name == "pr-validation":
        from flows.pr_validation import pr_validation

        return pr_validation
    if name == "integration":
        from flows.integration import integration

        return integration
    if name == "nightly":
        from flows.nightly import nightly

        return nightly
    if name == "release":
        from flows.release import release

        return release
    from flows.cost_report import cost_report

    return cost_report


def flow_parameters(args: argparse.Namespace, repo: str) -> dict[str, Any]:
    """The flow's parameters from the command line (the same names as in prefect.yaml)."""
    if args.flow == "cost-report":
        return {k: v for k, v in {"webhook_url": args.webhook_url}.items() if v is not None}
    params: dict[str, Any] = {"repo": repo, "ref": args.ref}
    if args.flow in ("pr-validation", "integration"):
        params["base"] = args.base
    if args.flow in ("integration", "nightly") and args.llm_mode:
        params["llm_mode"] = args.llm_mode
    if args.flow == "release":
        params["dry_run"] = args.dry_run
        if args.repository_url:
            params["repository_url"] = args.repository_url
    return params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow", choices=FLOW_NAMES, help="the pipeline to run")
    parser.add_argument(
        "--repo",
        help="path or URL of the target git repository (default: the embedded sample project)",
    )
    parser.add_argument(
        "--ref", default="HEAD", help="branch, tag or commit to run on (release: the tag)"
    )
    parser.add_argument("--base", help="base ref of the change, for change detection")
    parser.add_argument(
        "--llm-mode",
        choices=("mock", "replay", "record", "live"),
        help="integration/nightly: how the LLM gateway answers (default: from cicd.yaml)",
    )
    parser.add_argument("--dry-run", action="store_true", help="release: do everything but upload")
    parser.add_argument("--repository-url", help="release: the index upload URL")
    parser.add_argument("--webhook-url", help="cost-report: where to send the summary")
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
        if "coverage_percent" in job:
            counts += f", coverage {job['coverage_percent']}%"
        reason = f"  ({job['reason']})" if job.get("reason") else ""
        print(f"  {job['name']:<14} {job['state']:<10} {job['duration']:7.1f}s{counts}{reason}")
        for failure in job.get("failures", []):
            print(f"      FAILED {failure['name']}: {failure['message']}")


def run(args: argparse.Namespace) -> int:
    repo = args.repo
    if repo is None and args.flow != "cost-report":
        from cicd.sample import default_sample_repo

        repo = str(default_sample_repo())
    repo = repo or ""
    flow = _flow(args.flow)
    started = time.monotonic()
    try:
        report = flow(**flow_parameters(args, repo))
        code = EXIT_PASSED
    except PipelineFailed as failed:
        report = failed.report.to_json()
        code = EXIT_FAILED
    except BadInput as exc:
        print(f"cicd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CicdError as exc:
        # The pipeline could not run to its jobs' end (a fetch that kept failing,
        # a project that does not build): a failure, said in one line.
        print(f"cicd: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"flow": args.flow, "state": "failed", "error": str(exc), "jobs": []}))
        return EXIT_FAILED
    report = {**report, "flow": args.flow, "duration": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(report))
    else:
        _print_human(report)
    return code
