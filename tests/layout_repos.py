"""Small target projects laid out as real ones are: where their pytest and
coverage.py configuration lives, and what it says.

Each builder writes a project into a directory (a git repository when asked)
and returns it; the tests run the real pytest and coverage.py over it.
"""

from __future__ import annotations

from pathlib import Path

from cicd.sample import commit_all, git

PYPROJECT = '[project]\nname = "gadget"\nversion = "1.0"\n'

# Every line of the package but one function body runs at import time.
GADGET = '''"""A package that pytest imports at start-up (through a plugin)."""

NAME = "gadget"
SIZES = {"small": 1, "large": 10}


def size(name: str) -> int:
    return SIZES[name]


def unused(value: int) -> int:
    doubled = value * 2
    return doubled
'''

# A pytest plugin of the project, loaded before any test module is imported.
PLUGIN = '''"""The project's pytest plugin: importing it imports the package."""

import gadget

GADGET_NAME = gadget.NAME
'''

PASSING_TESTS = """import gadget


def test_size() -> None:
    assert gadget.size("large") == 10


def test_name() -> None:
    assert gadget.NAME == "gadget"
"""

# Outside testpaths: collected only if the project's configuration is ignored.
DECOY_TEST = """def test_outside_testpaths() -> None:
    raise AssertionError("collected from outside the project's testpaths")
"""

BROKEN_TEST = "import module_that_does_not_exist\n\n\ndef test_never_runs() -> None:\n    pass\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# Where pytest's testpaths can be written, each as pytest reads it.
TESTPATHS_FILES = {
    "tox.ini": "[tox]\nenvlist = py3\n\n[pytest]\ntestpaths = testing\n",
    "setup.cfg": "[metadata]\nname = gadget\n\n[tool:pytest]\ntestpaths =\n    testing\n",
    "pytest.ini": "[pytest]\ntestpaths = testing\n",
    "pyproject.toml": PYPROJECT + '\n[tool.pytest.ini_options]\ntestpaths = ["testing"]\n',
}


def project_with_testpaths(root: Path, config_file: str, tests: str = PASSING_TESTS) -> Path:
    """Tests in ``testing/`` named by ``testpaths`` in ``config_file``; a
    failing decoy test in ``examples/`` that only a path-less run ignores."""
    files = {
        "src/gadget/__init__.py": GADGET,
        "testing/test_gadget.py": tests,
        "examples/test_example.py": DECOY_TEST,
        config_file: TESTPATHS_FILES[config_file],
    }
    if config_file != "pyproject.toml":
        files["pyproject.toml"] = PYPROJECT
    return write(root, files)


def plugin_project(root: Path, coverage_report: str = "", parallel: bool = False) -> Path:
    """A package pytest imports through the project's plugin (``-p``), with
    coverage configured in ``pyproject.toml``: ``source = gadget``."""
    run = '[tool.coverage.run]\nsource = ["gadget"]\n' + ("parallel = true\n" if parallel else "")
    pyproject = (
        PYPROJECT
        + '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\naddopts = "-p gadget_plugin"\n'
        + "\n"
        + run
        + ("\n[tool.coverage.report]\n" + coverage_report if coverage_report else "")
    )
    return write(
        root,
        {
            "pyproject.toml": pyproject,
            "src/gadget/__init__.py": GADGET,
            "src/gadget_plugin.py": PLUGIN,
            "tests/test_gadget.py": PASSING_TESTS,
        },
    )


def as_repository(root: Path, message: str = "a project") -> Path:
    git(root, "init", "--quiet", "-b", "main")
    commit_all(root, message)
    return root
