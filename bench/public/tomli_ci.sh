#!/bin/sh
# hukkin/tomli's own CI for a pull request on one Python version, one command after another
# (.github/workflows/tests.yaml at 920e20b, https://github.com/hukkin/tomli): of the `linters`
# job's pre-commit hooks, the four the quality job also runs, each given every tracked Python
# file as pre-commit gives it (https://pre-commit.com/#hooks-types); then the `coverage` job.
# Its `tests` job (`python -m unittest` per version) is the coverage job's run without coverage.
# $1 repository, $2 ref, $3 a venv prepared once (tools, test dependencies; not timed).
# The checkout's src/ is on PYTHONPATH instead of `pip install .`, as the pipeline does.
set -u
ws=$(mktemp -d)
git clone --quiet "$1" "$ws" && git -C "$ws" checkout --quiet "$2" || exit 2
cd "$ws"
export PYTHONPATH="$ws/src"
py="$3/bin/python"
status=0
git ls-files -z -- '*.py' | xargs -0 "$py" -m isort --check-only --diff || status=1
git ls-files -z -- '*.py' | xargs -0 "$py" -m black --check --diff || status=1
git ls-files -z -- '*.py' | xargs -0 "$py" -m flake8 || status=1
git ls-files -z -- '*.py' | xargs -0 "$py" -m mypy --scripts-are-modules || status=1
rm -rf tests/data/valid/_external/ tests/data/invalid/_external/
"$py" -m coverage run -m unittest || status=1
"$py" -m coverage report --fail-under=100 || status=1
cd / && rm -rf "$ws"
exit $status
