"""bench/compat_runs.py reads real pytest and unittest output: failures and errors apart.

The suites are written to tmp and run with this interpreter; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "compat_runs.py"

# Two passing tests, one failing, one whose fixture raises (an error), one skipped.
SUITE = """
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture")


def test_one():
    assert True


def test_two():
    assert True


def test_fails():
    assert 1 == 2


def test_errors(broken):
    pass


@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""

UNITTEST_SUITE = """
import unittest


class T(unittest.TestCase):
    def test_ok(self):
        pass

    def test_fails(self):
        self.assertEqual(1, 2)

    def test_errors(self):
        raise RuntimeError("boom")

    @unittest.skip("not here")
    def test_skipped(self):
        pass
"""


@pytest.fixture(scope="module")
def compat_runs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _output(tmp_path: Path, source: str, argv: list[str]) -> str:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("quiet", [[], ["-q"]], ids=["default", "quiet"])
def test_pytest_errors_are_not_failures(
    tmp_path: Path, compat_runs: ModuleType, quiet: list[str]
) -> None:
    output = _output(tmp_path, SUITE, ["-m", "pytest", "-p", "no:cacheprovider", *quiet])
    counts = compat_runs.parse_counts(output)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (2, 1, 1, 1)


def test_unittest_errors_are_not_failures(tmp_path: Path, compat_runs: ModuleType) -> None:
    output = _output(tmp_path, UNITTEST_SUITE, ["-m", "unittest", "test_sample"])
    counts = compat_runs.parse_counts(output)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (1, 1, 1, 1)
