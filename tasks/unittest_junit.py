"""A unittest suite run as ``python -m unittest`` runs it, with a JUnit XML report.

For a project whose CI runs ``python -m unittest`` (hukkin/tomli): pytest over
the same tests costs its own start-up and collection, about a second there
against a quarter of a second for the whole unittest run (bench/README.md,
issue 15 item 4). This file is not imported by cicd-flows: the test job copies
it into the run's reports directory and runs it with the project's interpreter
(``python -m coverage run <this file> --junitxml=...``), so it uses the
standard library only and runs on every Python the projects support (3.8+).

What it runs is what ``python -m unittest`` runs: with no path, discovery from
the working directory with the default pattern ``test*.py``
(https://docs.python.org/3/library/unittest.html#test-discovery); a directory
is discovered from, a file or dotted name is loaded by name. The report is
pytest's xunit2 flavour, as ``tasks.pytest_outcome.parse_junit`` reads it: a
test ``tests.test_misc.Case.test_x`` is ``classname="tests.test_misc.Case"``
``name="test_x"``; a module that cannot be imported is an ``<error
message="collection failure">``. The exit status is pytest's
(https://docs.pytest.org/en/stable/reference/exit-codes.html): 0 passed, 1
tests failed or a module could not be imported (unittest runs every other
module, unlike pytest, which stops: exit 2), 4 a named path does not load, 5
no test ran.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import unittest
import xml.etree.ElementTree as ET

COLLECTION_FAILURE = "collection failure"
# unittest's placeholder for a module it could not import (unittest/loader.py).
FAILED_IMPORT = "unittest.loader._FailedTest."


class _Recorder(unittest.TextTestResult):
    """TextTestResult (the usual output) that also keeps one row per outcome."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rows: list[tuple[str, str, str, str, float]] = []
        self._started = time.perf_counter()

    def startTest(self, test: unittest.TestCase) -> None:
        self._started = time.perf_counter()
        super().startTest(test)

    def _row(self, test: unittest.TestCase, outcome: str, message: str, text: str) -> None:
        self.rows.append((test.id(), outcome, message, text, time.perf_counter() - self._started))

    def _failure(self, test: unittest.TestCase, err: object, outcome: str) -> None:
        text = self._exc_info_to_string(err, test)  # type: ignore[attr-defined]
        exc = err[1] if isinstance(err, tuple) else None
        message = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        if test.id().startswith(FAILED_IMPORT):
            outcome, message = "error", COLLECTION_FAILURE
        self._row(test, outcome, message.splitlines()[0] if message else "", text)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._row(test, "passed", "", "")

    def addFailure(self, test: unittest.TestCase, err: object) -> None:
        super().addFailure(test, err)  # type: ignore[arg-type]
        self._failure(test, err, "failure")

    def addError(self, test: unittest.TestCase, err: object) -> None:
        super().addError(test, err)  # type: ignore[arg-type]
        self._failure(test, err, "error")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._row(test, "skipped", reason, "")

    def addExpectedFailure(self, test: unittest.TestCase, err: object) -> None:
        super().addExpectedFailure(test, err)  # type: ignore[arg-type]
        self._row(test, "skipped", "expected failure", "")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        # pytest's xunit2 report of a strict xpass: a failure.
        self._row(test, "failure", "unexpected success", "")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: object) -> None:
        super().addSubTest(test, subtest, err)  # type: ignore[arg-type]
        if err is not None:
            failed = issubclass(err[0], test.failureException)  # type: ignore[index]
            self._failure(subtest, err, "failure" if failed else "error")


def _split(test_id: str) -> tuple[str, str]:
    """``pkg.mod.Case.test_x`` -> (``pkg.mod.Case``, ``test_x``); a sub-test keeps its
    parameters in the name (``test_x (n=1)``)."""
    if test_id.startswith(FAILED_IMPORT):
        return test_id[len(FAILED_IMPORT) :], ""
    head, _, params = test_id.partition(" ")
    classname, _, name = head.rpartition(".")
    return classname, name + (f" {params}" if params else "")


def write_junit(path: str, rows: list[tuple[str, str, str, str, float]], took: float) -> None:
    counts = {o: sum(1 for r in rows if r[1] == o) for o in ("failure", "error", "skipped")}
    suite = ET.Element(
        "testsuite",
        name="unittest",
        tests=str(len(rows)),
        failures=str(counts["failure"]),
        errors=str(counts["error"]),
        skipped=str(counts["skipped"]),
        time=f"{took:.3f}",
    )
    for test_id, outcome, message, text, seconds in rows:
        classname, name = _split(test_id)
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}"
        )
        if outcome != "passed":
            ET.SubElement(case, outcome, message=message).text = text or None
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def load(names: list[str]) -> unittest.TestSuite:
    loader = unittest.TestLoader()
    if not names:
        return loader.discover(".", top_level_dir=".")
    suite = unittest.TestSuite()
    for name in names:
        if os.path.isdir(name):
            suite.addTests(loader.discover(name, top_level_dir="."))
        else:
            module = name[:-3] if name.endswith(".py") else name
            suite.addTests(loader.loadTestsFromName(module.replace(os.sep, ".")))
    return suite


def main(argv: list[str]) -> int:
    junit = next((a.split("=", 1)[1] for a in argv if a.startswith("--junitxml=")), None)
    names = [a for a in argv if not a.startswith("--junitxml=")]
    # As `python -m unittest` has it: the working directory first on sys.path
    # (run as a file, sys.path[0] would be this file's directory).
    sys.path[0] = os.getcwd()
    started = time.perf_counter()
    try:
        suite = load(names)
    except Exception:  # a name that does not load: unittest's usage error
        traceback.print_exc()
        return 4
    runner = unittest.TextTestRunner(resultclass=_Recorder, verbosity=1)
    result = runner.run(suite)
    rows = result.rows  # type: ignore[attr-defined]
    if junit:
        write_junit(junit, rows, time.perf_counter() - started)
    if not rows:
        return 5
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
