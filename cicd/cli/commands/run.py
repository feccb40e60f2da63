"""``cicd run PIPELINE``: run a pipeline locally and report like a CI job.

The pipelines, their options and their flows come from ``flows/registry.py``.
Exit codes are those of ``cicd/cli/error_handler.py``: 0 the pipeline passed,
1 it failed, 2 bad input, 3 an unexpected error, or a job without a verdict
when the control plane stayed unreachable (``cicd/cli/run_watch.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from cicd.cli import warm_state
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
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr while it runs (a live view on a terminal, "
        "timestamped lines otherwise)",
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
    error goes to the error handler.

    Through the warm runner (``cicd/cli/warm_runner.py``) unless
    ``CICD_WARM=off`` or it cannot be used: this process then never imports
    Prefect and only waits for the child's exit code."""
    entry = PIPELINES[args.pipeline]
    repo = getattr(args, "repo", None)
    if entry.takes_repo and repo is None:
        from cicd.sample import default_sample_repo

        repo = str(default_sample_repo())
    if warm_state.mode() == "off":
        code = run_here(args, outcome, repo, None)
        publish_pending()
        return code
    warm_state.idle_seconds()  # bad input before anything starts
    from cicd.cli import warm_client
    from cicd.cli.progress_view import make_view

    # Plain lines until the child's own view takes the terminal.
    note = make_view(sys.stderr, quiet=getattr(args, "quiet", False), live=False).note
    with api_for_run(note) as api_url:
        handed = warm_client.run(args.argv, repo, api_url, note)
        if handed is not None:
            return handed
        code = run_here(args, outcome, repo, api_url)
        publish_pending()
        return code


def publish_pending() -> None:
    """Wait for the run's deferred artifacts (tasks/deferred.py) once the report
    is out, while the interpreter still runs: at its exit, after
    ``threading._shutdown``, Prefect's events worker can no longer start
    ("can't register atexit after shutdown") and they would be lost."""
    from tasks import deferred

    deferred.wait()


def run_here(
    args: argparse.Namespace, outcome: Outcome, repo: str | None, api_url: str | None
) -> int:
    """The run in this process (the warm runner's child runs this too): the
    API is decided here when ``api_url`` is None."""
    from cicd.cli import prefect_tls
    from cicd.cli.progress_view import make_view, watching

    entry = PIPELINES[args.pipeline]
    # The flow runs here, in this process, its jobs in the task runner's
    # threads: their progress events reach the view directly.
    view = make_view(sys.stderr, quiet=getattr(args, "quiet", False))
    with contextlib.ExitStack() as stack:
        stack.enter_context(watching(view))
        timings = _timings_listener()
        if timings is not None:
            from tasks import progress

            stack.enter_context(progress.listening(timings))
        if api_url is None:
            api_url = stack.enter_context(api_for_run(view.note))
        view.note(f"{entry.name}: started")
        prefect_tls.share()  # one CA bundle load for all the run's API clients
        _timing("FlowCalled")
        report, code = _run_flow(entry, args, outcome, repo, api_url)
    if report is not None:
        _print(report, outcome)
    _timing("Reported")
    return code


def _timing(event: str, at: float | None = None, job: str | None = None) -> None:
    """With ``CICD_TIMINGS_FILE``, one JSON line: the flow called, each job's
    start and end, the report printed (bench/fixed_cost.py reads them against
    the process's own start and exit)."""
    path = os.environ.get(warm_state.TIMINGS_VARIABLE)
    if path:
        line = json.dumps({"event": event, "job": job, "at": at or time.time()})
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _timings_listener() -> Callable[[Any], None] | None:
    if not os.environ.get(warm_state.TIMINGS_VARIABLE):
        return None

    def record(event: Any) -> None:
        name = type(event).__name__
        if name in ("JobStarted", "JobFinished"):
            _timing(name, event.at, event.job)

    return record


@contextlib.contextmanager
def api_for_run(note: Callable[[str], None]) -> Iterator[str]:
    """The API this run reports to (cicd/cli/prefect_address.py), with the
    local server started first when there is none; Prefect is not imported yet.

    The server of ``cicd up`` that does not answer is passed over for the local
    one; a ``PREFECT_API_URL`` given that does not answer is an error.
    """
    from cicd.cli import prefect_address
    from deployments import run_server
    from deployments.stack_processes import api_healthy

    address = prefect_address.current()
    if address is not None and address.origin == prefect_address.GIVEN:
        from cicd.cli.prefect_api import require_api

        require_api(address.url)
        yield address.url
        return
    stack = address is not None and address.origin == prefect_address.STACK
    if address is not None and stack and api_healthy(address.url, timeout=5):
        yield address.url
        return
    with run_server.in_use():
        url = run_server.ensure_server(note)
        prefect_address.use(url)
        yield url


def _run_flow(
    entry: Pipeline, args: argparse.Namespace, outcome: Outcome, repo: str | None, api_url: str
) -> tuple[dict[str, Any] | None, int]:
    """The report and exit code of the flow, printed by the caller once the
    progress view has closed; no report when the unreachable path printed its own."""
    from cicd.cli import run_watch
    from cicd.results import PipelineFailed

    flow = entry.load()
    started = time.monotonic()
    ref = getattr(args, "ref", None)

    def local_end(ended: bool) -> int:
        report = run_watch.local_report(entry.name, repo, ref, api_url)
        report["duration"] = round(time.monotonic() - started, 3)
        print(run_watch.unreachable_line(api_url), file=sys.stderr, flush=True)
        code = run_watch.exit_code(report)
        _print(report, outcome)
        if not ended:
            run_watch.end_now(code)  # the flow is stuck in Prefect's retries
        return code

    parameters = entry.parameters(vars(args), repo)

    def call() -> Any:
        with _local_heartbeats():
            return flow(**parameters)

    from cicd.git import ahead

    if entry.takes_repo and repo is not None and isinstance(ref, str):
        # While Prefect's engine creates the run, its checkout goes on (cicd/git/ahead.py).
        ahead.start(repo, ref)
    try:
        watched = run_watch.watch(
            call,
            api_url,
            run_watch.wait_seconds(),
            lambda: local_end(ended=False),
        )
    finally:
        ahead.discard()
    if watched.interrupted and _lost_to_the_outage(watched.error):
        return None, local_end(ended=True)
    if isinstance(watched.error, PipelineFailed):
        report = watched.error.report.to_json()
        code = EXIT_FAILED
    elif watched.error is not None:
        raise watched.error
    else:
        report = watched.value
        code = EXIT_PASSED
    if watched.interrupted and "jobs" in report:
        # Jobs Prefect lost to the outage get their verdict from the journal.
        report = run_watch.reconcile({**report, "flow": entry.name})
        code = EXIT_PASSED if report["state"] == "passed" else EXIT_FAILED
    report = {**report, "flow": entry.name, "duration": round(time.monotonic() - started, 3)}
    return report, code


@contextlib.contextmanager
def _local_heartbeats() -> Iterator[None]:
    """No flow-run heartbeats for a run in the CLI's process, unless asked for.

    Heartbeats exist so the server can crash and reschedule a run whose worker
    died (deployments/crash_recovery.py); a run here has no worker to hand it
    to, its user sees it end, and what it leaves is reclaimed by the next
    command. Their thread sleeps in 1 s steps and is joined when the flow ends
    (``_send_heartbeats`` in prefect/flow_engine.py, 3.9.1): up to a second
    added to every run, after its last job. ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
    set by the user is kept.

    A copy of the current settings with that one field changed, not
    ``temporary_settings``: its ``Settings.copy_with_update`` validates a whole
    new ``Settings`` and reads every environment source again, 50-100 ms of
    CPU before the flow starts (cProfile of a run, bench/README.md, issue 15).
    """
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    flows = context.settings.flows.model_copy(update={"heartbeat_frequency": None})
    settings = context.settings.model_copy(update={"flows": flows})
    with SettingsContext(profile=context.profile, settings=settings):
        yield


def _lost_to_the_outage(error: BaseException | None) -> bool:
    """An error that is the control plane's, not the pipeline's: anything but a
    pipeline's own verdict or bad input, seen while the server was away."""
    from cicd.errors import BadInput
    from cicd.results import PipelineFailed

    return error is not None and not isinstance(error, PipelineFailed | BadInput)


def _print(report: dict[str, Any], outcome: Outcome) -> None:
    if outcome.json_output:
        outcome.print_json(report)
    else:
        _print_human(report)
