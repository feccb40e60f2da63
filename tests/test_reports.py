"""JUnit and coverage parsing, and the summary the flows publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cicd.results import JobResult, JobState, PipelineReport, StepResult, TestCounts, TestFailure
from tasks.reports import artifact_key, job_rows, render_job, render_summary
from tasks.testing import ReportError, parse_coverage, parse_junit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
  <testcase classname="tests.unit.test_a" name="test_ok" time="0.1"/>
  <testcase classname="tests.unit.test_a" name="test_ok2" time="0.1"/>
  <testcase classname="tests.unit.test_b" name="test_bad" time="0.1">
    <failure message="AssertionError: expected 4, got 5">trace</failure></testcase>
  <testcase classname="tests.unit.test_b" name="test_err" time="0.1">
    <error message="">fixture 'db' not found
more</error></testcase>
  <testcase classname="tests.unit.test_c" name="test_skip" time="0">
    <skipped message="no db"/></testcase>
</testsuite></testsuites>"""


def test_parse_junit_counts_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = parse_junit(path)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (2, 1, 1, 1)
    assert counts.failures == (
        TestFailure("tests.unit.test_b::test_bad", "AssertionError: expected 4, got 5"),
        TestFailure("tests.unit.test_b::test_err", "fixture 'db' not found"),
    )


def test_unreadable_reports_are_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.xml").write_text("<testsuites>")
    with pytest.raises(ReportError, match=r"bad\.xml"):
        parse_junit(tmp_path / "bad.xml")
    (tmp_path / "cov.json").write_text(json.dumps({"totals": {}}))
    with pytest.raises(ReportError, match=r"cov\.json"):
        parse_coverage(tmp_path / "cov.json")


def test_parse_coverage(tmp_path: Path) -> None:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"totals": {"percent_covered": 87.5}}))
    assert parse_coverage(path) == 87.5


def _report() -> PipelineReport:
    return PipelineReport(
        flow="pr-validation",
        repo="/r",
        ref="main",
        commit="0123456789abcdef",
        duration=12.5,
        jobs=(
            JobResult(
                "quality",
                JobState.FAILED,
                2.0,
                steps=(
                    StepResult(
                        "ruff",
                        "python -m ruff check src",
                        1,
                        0.5,
                        output_tail="F401 `os` imported but unused",
                    ),
                ),
                reason="ruff (exit 1)",
            ),
            JobResult(
                "unit", JobState.PASSED, 3.0, tests=TestCounts(12, 0, 0, 1), coverage_percent=82.41
            ),
            JobResult(
                "framework",
                JobState.FAILED,
                4.0,
                tests=TestCounts(2, 1, 0, 0, (TestFailure("t::test_x", "boom | pipe"),)),
                reason="1 test(s) failed",
            ),
        ),
    )


def test_summary_lists_jobs_failures_and_failed_steps() -> None:
    summary = render_summary(_report())
    assert summary.startswith("# pr-validation: failed")
    assert "| unit | ✅ passed | 3.0s | 12 | 0 | 0 | 1 | 82.4% |" in summary
    assert "`t::test_x`: boom \\| pipe" in summary
    assert "### quality / ruff (exit 1)" in summary and "F401" in summary


def test_table_rows_and_json() -> None:
    report = _report()
    rows = job_rows(report)
    assert [(r["job"], r["state"], r["failed"], r["errors"]) for r in rows] == [
        ("quality", "failed", "", ""),
        ("unit", "passed", "0", "0"),
        ("framework", "failed", "1", "0"),
    ]
    data = report.to_json()
    assert data["state"] == "failed"
    assert data["jobs"][1] | {} == {**data["jobs"][1], "passed": 12, "coverage_percent": 82.41}


def test_errors_have_their_own_column_not_the_failed_one() -> None:
    # A suite whose 20 modules fail to import: 20 errors, 0 failed tests (issue 9).
    job = JobResult(
        "unit",
        JobState.FAILED,
        1.0,
        reason="20 collection error(s)",
        tests=TestCounts(0, 0, 20, 0, collection_errors=20),
    )
    report = PipelineReport("pr-validation", "r", "main", "c" * 40, (job,), 1.0)
    summary = render_summary(report)
    assert "| Job | State | Duration | Passed | Failed | Errors | Skipped |" in summary
    assert "| 0 | 0 | 20 | 0 |" in summary
    assert "Tests: 0 passed, 0 failed, 20 errors, 0 skipped" in render_job(job)


def test_artifact_keys_are_valid() -> None:
    assert artifact_key("PR_validation", "summary") == "pr-validation-summary"
