#!/bin/sh
# pytest-dev/pluggy's own CI for a pull request on one Python version, one command after
# another (https://github.com/pytest-dev/pluggy at e382e72): of the pre-commit hooks
# (.pre-commit-config.yaml), the three the quality job also runs, mypy given the files its
# hook selects (`files: ^(src/|testing/)`, https://pre-commit.com/#hooks-files); then tox's
# `py311-coverage` environment (.github/workflows/test.yml, tox.ini `[testenv]`).
# $1 repository, $2 ref, $3 a venv prepared once (tools, the `testing` group; not timed).
# The checkout's src/ is on PYTHONPATH instead of tox's install, as the pipeline does.
set -u
ws=$(mktemp -d)
git clone --quiet "$1" "$ws" && git -C "$ws" checkout --quiet "$2" || exit 2
cd "$ws"
export PYTHONPATH="$ws/src"
py="$3/bin/python"
status=0
"$py" -m ruff check || status=1
"$py" -m ruff format --check || status=1
git ls-files -z -- 'src/*.py' 'src/*.pyi' 'testing/*.py' 'testing/*.pyi' \
    | xargs -0 "$py" -m mypy || status=1
export _PYTEST_SETUP_SKIP_PLUGGY_DEP=1
"$py" -m coverage run -m pytest || status=1
"$py" -m coverage combine || status=1
"$py" -m coverage report -m || status=1
"$py" -m coverage xml || status=1
cd / && rm -rf "$ws"
exit $status
