"""The run summary: a markdown report and a table, published as Prefect artifacts.

Rendering is pure (tested without Prefect); ``publish_report`` adds the artifacts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from cicd import masking
from cicd.results import JobResult, JobState, PipelineReport

_ICONS = {
    JobState.PASSED: "✅",
    JobState.FAILED: "❌",
    JobState.TIMED_OUT: "⏱️",
    JobState.SKIPPED: "⏭️",
    JobState.CACHED: "♻️",
    JobState.ERRORED: "💥",
    JobState.CANCELLED: "🛑",
}


def _counts(job: JobResult) -> tuple[str, str, str, str]:
    """Passed, failed, errors and skipped, apart as pytest counts them: an error
    (set-up, tear-down, collection) is not a failed test."""
    if job.tests is None:
        return ("", "", "", "")
    tests = job.tests
    return (str(tests.passed), str(tests.failed), str(tests.errors), str(tests.skipped))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def job_rows(report: PipelineReport) -> list[dict[str, Any]]:
    rows = []
    for job in report.jobs:
        passed, failed, errors, skipped = _counts(job)
        rows.append(
            {
                "job": job.name,
                "state": job.state.value,
                "duration_s": round(job.duration, 2),
                "passed": passed,
                "failed": failed,
                "errors": errors,
                "skipped": skipped,
                "coverage_percent": (
                    "" if job.coverage_percent is None else round(job.coverage_percent, 1)
                ),
                "reason": job.reason,
            }
        )
    return rows


def render_summary(report: PipelineReport) -> str:
    verdict = "passed ✅" if report.passed else "failed ❌"
    lines = [
        f"# {report.flow}: {verdict}",
        "",
        f"**Repository** `{report.repo}` at `{report.ref}` (`{report.commit[:12]}`), "
        f"{report.duration:.1f}s",
        "",
        "| Job | State | Duration | Passed | Failed | Errors | Skipped | Coverage | Note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row, job in zip(job_rows(report), report.jobs, strict=True):
        coverage = f"{row['coverage_percent']}%" if row["coverage_percent"] != "" else ""
        lines.append(
            f"| {job.name} | {_ICONS[job.state]} {job.state.value} | {job.duration:.1f}s "
            f"| {row['passed']} | {row['failed']} | {row['errors']} | {row['skipped']} "
            f"| {coverage} | {_escape(job.reason)} |"
        )
    failures = [(job, f) for job in report.jobs if job.tests for f in job.tests.failures]
    if failures:
        lines += ["", "## Failing tests", ""]
        lines += [f"- **{job.name}** `{f.name}`: {_escape(f.message)}" for job, f in failures]
    failed_steps = [(job, s) for job in report.jobs for s in job.steps if not s.ok]
    if failed_steps:
        lines += ["", "## Failed steps"]
        for job, step in failed_steps:
            lines += [
                "",
                f"### {job.name} / {step.name} (exit {step.returncode}"
                f"{', timed out' if step.timed_out else ''})",
                "",
                f"`{step.command}`",
                "",
                "```",
                step.output_tail[-4000:],
                "```",
            ]
    for section in (*(job.section for job in report.jobs if job.section), *report.sections):
        lines += ["", section.rstrip()]
    return "\n".join(lines) + "\n"


def artifact_key(flow: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"{flow}-{kind}".lower()
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in raw)


@contextmanager
def own_client() -> Iterator[None]:
    """A Prefect client of its own for the block, in the run's context otherwise.

    Artifacts are published from a thread of their own (``tasks.deferred``)
    that may outlive the run's engine, and with it the client the engine put
    in ``SyncClientContext`` (closed when the run ends), which Prefect's
    ``get_client`` and ``Artifact.create`` would take.
    """
    from prefect.context import AsyncClientContext, SyncClientContext

    tokens = (
        SyncClientContext.__var__.set(cast(Any, None)),
        AsyncClientContext.__var__.set(cast(Any, None)),
    )
    try:
        with SyncClientContext.get_or_create():
            yield
    finally:
        SyncClientContext.__var__.reset(tokens[0])
        AsyncClientContext.__var__.reset(tokens[1])


def publish_report(report: PipelineReport) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    with own_client():
        create_markdown_artifact(
            key=artifact_key(report.flow, "summary"),
            markdown=masking.mask(render_summary(report)),
            description=f"{report.flow} summary for {report.repo}@{report.ref}",
        )
        create_table_artifact(
            key=artifact_key(report.flow, "jobs"),
            table=masking.mask_json(job_rows(report)),
            description=f"{report.flow} jobs",
        )


def render_job(result: JobResult) -> str:
    """One job's result as markdown: the artifact of its task run."""
    lines = [f"# {result.name}: {_ICONS[result.state]} {result.state.value}", ""]
    reason = f" - {_escape(result.reason)}" if result.reason else ""
    lines.append(f"{result.duration:.1f}s{reason}")
    if result.tests is not None:
        passed, failed, errors, skipped = _counts(result)
        lines += [
            "",
            f"Tests: {passed} passed, {failed} failed, {errors} errors, {skipped} skipped",
        ]
        lines += [f"- `{f.name}`: {_escape(f.message)}" for f in result.tests.failures]
    if result.coverage_percent is not None:
        lines += ["", f"Coverage: {result.coverage_percent:.1f}%"]
    if result.steps:
        lines += ["", "| Step | Exit | Duration |", "|---|---:|---:|"]
        lines += [f"| {s.name} | {s.returncode} | {s.duration:.1f}s |" for s in result.steps]
    return "\n".join(lines) + "\n"


def publish_job_artifact(flow: str, result: JobResult) -> None:
    from prefect.artifacts import create_markdown_artifact

    with own_client():
        create_markdown_artifact(
            key=artifact_key(flow, f"job-{result.name}"),
            markdown=masking.mask(render_job(result)),
            description=f"{flow} job {result.name}",
        )
