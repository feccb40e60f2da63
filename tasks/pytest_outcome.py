"""What a pytest run said: counts from its JUnit XML, a reason from its exit code.

Failures, errors and collection errors are told apart as pytest tells them:
a ``<failure>`` is a failed test, an ``<error>`` a test whose set-up or
tear-down raised, and an ``<error message="collection failure">`` a module
pytest could not import (``_pytest/junitxml.py``, ``append_collect_error``);
the last is an error, never a failed test. The exit codes are pytest's own
(https://docs.pytest.org/en/stable/reference/exit-codes.html).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from cicd.errors import CicdError
from cicd.results import TestCounts, TestFailure

# pytest.ExitCode
OK = 0
TESTS_FAILED = 1
INTERRUPTED = 2
INTERNAL_ERROR = 3
USAGE_ERROR = 4
NO_TESTS_COLLECTED = 5

MESSAGE_CHARS = 500
COLLECTION_FAILURE = "collection failure"
OUTCOMES = frozenset({"failure", "error", "skipped"})


class ReportError(CicdError):
    """A JUnit or coverage report is missing or unreadable."""


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:MESSAGE_CHARS] if text else ""


def parse_junit(path: Path) -> TestCounts:
    """Counts and failing tests from a JUnit XML report (pytest's xunit2 flavour).

    Streamed (``iterparse``, each test case cleared once counted): a report of
    tens of thousands of tests is read in one pass without holding its tree.
    """
    passed = failed = errors = skipped = collection_errors = 0
    failures: list[TestFailure] = []
    try:
        for _event, case in ET.iterparse(path, events=("end",)):
            if case.tag != "testcase":
                continue
            outcome = next((child for child in case if child.tag in OUTCOMES), None)
            if outcome is None:
                passed += 1
            elif outcome.tag == "skipped":
                skipped += 1
            else:
                message = outcome.get("message") or ""
                if outcome.tag == "failure":
                    failed += 1
                else:
                    errors += 1
                    if message == COLLECTION_FAILURE:
                        collection_errors += 1
                        # The traceback says why the module could not be collected.
                        message = f"{COLLECTION_FAILURE}: {_first_line(outcome.text)}"
                name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
                message = message or _first_line(outcome.text)
                failures.append(TestFailure(name, message[:MESSAGE_CHARS]))
            case.clear()
    except (OSError, ET.ParseError) as exc:
        raise ReportError(f"cannot read JUnit report {path}: {exc}") from None
    return TestCounts(passed, failed, errors, skipped, tuple(failures), collection_errors)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def counts_reason(tests: TestCounts) -> str:
    """``2 failed, 1 error`` (collection errors named as such)."""
    parts = []
    if tests.failed:
        parts.append(f"{tests.failed} failed")
    test_errors = tests.errors - tests.collection_errors
    if test_errors:
        parts.append(_plural(test_errors, "error"))
    if tests.collection_errors:
        parts.append(_plural(tests.collection_errors, "collection error"))
    return ", ".join(parts)


def _output_line(output: str, prefixes: tuple[str, ...]) -> str:
    """The first line of pytest's output that starts with one of ``prefixes``."""
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith(prefixes):
            return stripped[:MESSAGE_CHARS]
    return _last_line(output)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:MESSAGE_CHARS] if lines else ""


def exit_reason(returncode: int, tests: TestCounts | None, output: str, where: str) -> str:
    """Why a pytest run that did not pass failed, from its exit code and report.

    ``where`` says where pytest looked for tests (for "collected no tests").
    """
    counted = counts_reason(tests) if tests is not None else ""
    if returncode == TESTS_FAILED and counted:
        return counted
    if returncode == INTERRUPTED:
        if tests is not None and tests.collection_errors:
            first = next(f for f in tests.failures if f.message.startswith(COLLECTION_FAILURE))
            return f"{counted}: pytest stopped at collection ({first.name})"
        return f"pytest was interrupted (exit 2): {_output_line(output, ('!', 'Interrupted'))}"
    if returncode == INTERNAL_ERROR:
        return f"pytest internal error (exit 3): {_output_line(output, ('INTERNALERROR>',))}"
    if returncode == USAGE_ERROR:
        return f"pytest usage error (exit 4): {_output_line(output, ('ERROR:',))}"
    if returncode == NO_TESTS_COLLECTED:
        return f"collected no tests from {where}"
    detail = _last_line(output)
    return f"pytest exit {returncode}" + (f": {detail}" if detail else "")
