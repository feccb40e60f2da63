"""Small projects whose version the build backend computes, as real git
repositories: flit's ``__version__``, setuptools-scm, setuptools' ``attr:``.

Each has one passing test and a ``cicd.yaml`` that releases to a given index,
so a release run is quick; their backends come from PyPI in ``python -m
build``'s isolated environment, as on any CI.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cicd.sample import commit_all, git

README = "# Release probe\n\nA tiny package published by the cicd-flows tests.\n"
TEST = "def test_it_imports() -> None:\n    import {module}  # noqa: F401\n"

FLIT = "flit"
SCM = "setuptools-scm"
ATTR = "setuptools-attr"


def _module(kind: str) -> str:
    return "cicd_" + kind.replace("-", "_") + "_probe"


def project_name(kind: str) -> str:
    return _module(kind).replace("_", "-")


def _files(kind: str, version: str) -> dict[str, str]:
    """The project's files; ``version`` is written where the backend reads it (not for scm)."""
    module, name = _module(kind), project_name(kind)
    init = f'"""The {kind} release probe."""\n'
    if kind == FLIT:
        pyproject = f"""[build-system]
requires = ["flit_core>=3.4,<4"]
build-backend = "flit_core.buildapi"

[project]
name = "{name}"
description = "A package the cicd-flows release tests publish"
readme = "README.md"
dynamic = ["version"]
"""
        return {
            "pyproject.toml": pyproject,
            f"{module}/__init__.py": init + f'__version__ = "{version}"\n',
        }
    if kind == SCM:
        pyproject = f"""[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
description = "A package the cicd-flows release tests publish"
readme = "README.md"
dynamic = ["version"]

[tool.setuptools_scm]
"""
        return {"pyproject.toml": pyproject, f"src/{module}/__init__.py": init}
    if kind == ATTR:
        # No [project] table: the metadata is setup.cfg's, as in older projects
        # (https://setuptools.pypa.io/en/latest/userguide/declarative_config.html).
        setup_cfg = f"""[metadata]
name = {name}
version = attr: {module}.__version__
description = A package the cicd-flows release tests publish
long_description = file: README.md
long_description_content_type = text/markdown

[options]
package_dir =
    =src
packages = find:

[options.packages.find]
where = src
"""
        return {
            "pyproject.toml": (
                '[build-system]\nrequires = ["setuptools>=64"]\n'
                'build-backend = "setuptools.build_meta"\n'
            ),
            "setup.cfg": setup_cfg,
            f"src/{module}/__init__.py": init + f'__version__ = "{version}"\n',
        }
    raise ValueError(f"unknown kind {kind!r}")


def write_version(repo: Path, kind: str, version: str) -> None:
    for relative, text in _files(kind, version).items():
        path = repo / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def dynamic_version_repo(
    root: Path, kind: str, release: dict[str, str], version: str = "1.0.0"
) -> Path:
    """A repository of a ``kind`` project at ``version``, one commit on main, untagged.

    ``release`` is cicd.yaml's ``release`` section (the index to publish to).
    """
    repo = root / kind
    repo.mkdir(parents=True)
    write_version(repo, kind, version)
    (repo / "README.md").write_text(README, encoding="utf-8")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_probe.py").write_text(TEST.format(module=_module(kind)))
    (repo / ".gitignore").write_text("build/\ndist/\n*.egg-info/\n__pycache__/\n")
    config = {
        "version": 1,
        "tests": {"unit": {"paths": ["tests"], "timeout": 300}},
        "release": release,
    }
    (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, f"feat: initial {kind} probe")
    return repo
