"""Sharded test suites (``parallel: auto | N`` in a suite of cicd.yaml).

A sharded suite is collected once (``pytest --collect-only`` with the suite's own
paths, markers and arguments), its test files are split into N shards balanced
by the durations recorded for them in earlier runs (by test count when none
are known), and the shards run side by side, one pytest process each, under
``coverage run --parallel-mode``. The shards' JUnit reports are merged into the
suite's one report and their coverage data files are combined, so the counts,
the failures and the coverage total are those of the unsharded run.

Shards split by file, not by test, as GitLab's ``parallel:`` with
``pytest --splits`` and CircleCI's ``tests split --split-by=timings`` do
(https://circleci.com/docs/parallelism-faster-jobs/): module- and class-scoped
fixtures then run once per module as they do unsharded; a session-scoped one
runs once per shard, as under pytest-xdist
(https://pytest-xdist.readthedocs.io/en/stable/how-to.html#making-session-scoped-fixtures-execute-only-once).
A suite whose tests share state across files (a fixed port, a database) is not
safe to shard: it keeps ``parallel: off``, the default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree as ET

from cicd import paths
from cicd.config import SuiteConfig
from cicd.results import StepResult

# Runs pytest's collection and writes "file<TAB>node id" per selected test to
# the file named by its first argument; the other arguments go to pytest. The
# file is relative to the working directory (the workspace), whatever pytest's
# rootdir. Data only in argv: the code is a constant.
COLLECT_SCRIPT = """\
import os, sys
import pytest

class _Listing:
    def pytest_collection_finish(self, session):
        with open(sys.argv[1], "w", encoding="utf-8") as out:
            for item in session.items:
                where = os.path.relpath(str(item.path), os.getcwd())
                out.write(where + "\\t" + item.nodeid + "\\n")

sys.exit(pytest.main(["--collect-only", "-q", *sys.argv[2:]], plugins=[_Listing()]))
"""

# A shard with fewer files than this is not worth a process of its own.
MIN_FILES_PER_SHARD = 1
MAX_SHARDS = 64


def shard_count(parallel: str | int, cpus: int | None = None) -> int:
    """How many shards ``parallel`` asks for on this machine (1: not sharded)."""
    if parallel == "off":
        return 1
    if parallel == "auto":
        return max(1, min(MAX_SHARDS, cpus or os.cpu_count() or 1))
    return max(1, min(MAX_SHARDS, int(parallel)))


def collect_argv(python: Path, listing: Path, suite: SuiteConfig) -> list[str]:
    argv = [str(python), "-c", COLLECT_SCRIPT, str(listing), *suite.paths]
    argv += ["-p", "no:cacheprovider"]
    if suite.markers:
        argv += ["-m", suite.markers]
    return argv + list(suite.args)


def read_listing(listing: Path) -> dict[str, list[str]]:
    """Node ids by test file, in collection order."""
    files: dict[str, list[str]] = {}
    for line in listing.read_text(encoding="utf-8").splitlines():
        where, _, nodeid = line.partition("\t")
        if nodeid:
            files.setdefault(where, []).append(nodeid)
    return files


def args_name_paths(suite: SuiteConfig, workspace: Path) -> bool:
    """True when the suite's ``args`` name a test path: each shard would run it."""
    for arg in suite.args:
        if arg.startswith("-"):
            continue
        with contextlib.suppress(OSError, ValueError):
            if (workspace / arg.split("::")[0]).exists():
                return True
    return False


def plan(
    files: Mapping[str, Sequence[str]], durations: Mapping[str, float], shards: int
) -> list[list[str]]:
    """Files split into at most ``shards`` groups of about equal expected time:
    longest first, each onto the least loaded shard (Graham's LPT rule, within
    4/3 of the best split: https://en.wikipedia.org/wiki/Longest-processing-time-first_scheduling).

    A file with no recorded duration weighs its test count times the mean
    recorded time per test (1 s when nothing is recorded)."""
    known = [durations[f] / max(1, len(files[f])) for f in files if f in durations]
    per_test = sum(known) / len(known) if known else 1.0

    def weight(name: str) -> float:
        return durations.get(name, len(files[name]) * per_test)

    count = max(1, min(shards, len(files) // MIN_FILES_PER_SHARD))
    groups: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for name in sorted(files, key=lambda f: (-weight(f), f)):
        lightest = loads.index(min(loads))
        groups[lightest].append(name)
        loads[lightest] += weight(name)
    return [sorted(group) for group in groups if group]


def junit_key(nodeid: str) -> tuple[str, str]:
    """The (classname, name) pytest's JUnit report gives the test ``nodeid``
    (``mangle_test_address`` in _pytest/junitxml.py)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def file_durations(
    junit_paths: Sequence[Path], files: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Seconds per test file, from the shards' JUnit reports."""
    owner = {junit_key(nodeid): name for name, ids in files.items() for nodeid in ids}
    seconds: dict[str, float] = {}
    for path in junit_paths:
        if not path.is_file():
            continue
        with contextlib.suppress(ET.ParseError):
            for _event, case in ET.iterparse(path, events=("end",)):
                if case.tag != "testcase":
                    continue
                name = owner.get((case.get("classname", ""), case.get("name", "")))
                if name is not None:
                    with contextlib.suppress(ValueError):
                        seconds[name] = seconds.get(name, 0.0) + float(case.get("time") or 0)
                case.clear()
    return seconds


def merge_junit(parts: Sequence[Path], target: Path) -> None:
    """One ``<testsuites>`` holding every shard's ``<testsuite>`` elements."""
    root = ET.Element("testsuites")
    for part in parts:
        if not part.is_file():
            continue
        tree = ET.parse(part)
        top = tree.getroot()
        root.extend([top] if top.tag == "testsuite" else list(top))
    ET.ElementTree(root).write(target, encoding="utf-8", xml_declaration=True)


def combined_returncode(codes: Sequence[int]) -> int:
    """The exit status one pytest over every shard's tests would have given:
    an internal or usage error first (3, 4, 2: pytest's ExitCode), then failed
    tests (1); "no tests" (5) only when every shard had none."""
    for code in (3, 4, 2, 1):
        if code in codes:
            return code
    nonzero = [c for c in codes if c not in (0, 5)]
    if nonzero:
        return nonzero[0]
    return 5 if codes and all(c == 5 for c in codes) else 0


# ------------------------------------------------------------- recorded durations


def durations_path(project: str, suite_name: str) -> Path:
    digest = hashlib.sha256(f"{project}\0{suite_name}".encode()).hexdigest()[:24]
    directory = paths.home() / "durations"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{digest}.json"


def load_durations(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def save_durations(path: Path, old: Mapping[str, float], new: Mapping[str, float]) -> None:
    """Merge and write atomically: a concurrent run's write is replaced whole,
    never interleaved (the split only steers balance, never a verdict)."""
    merged = {**old, **new}
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(merged, sort_keys=True), encoding="utf-8")
    temporary.replace(path)


def run_shards(
    shards: Sequence[Sequence[str]], run_one: Callable[[int, Sequence[str]], StepResult]
) -> list[StepResult]:
    """Every shard at once, results in shard order. An exception of one shard
    (the run being torn down) is raised once all have returned."""
    with ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="shard") as pool:
        futures = [pool.submit(run_one, index, files) for index, files in enumerate(shards)]
        return [future.result() for future in futures]
