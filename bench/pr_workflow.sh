#!/bin/sh
# The PR workflow's commands, one after another, as a plain CI script would run them.
set -u
ws=$(mktemp -d)
git clone --quiet "$1" "$ws" && git -C "$ws" checkout --quiet "$2"
cd "$ws"
export PYTHONPATH="$ws/src"
status=0
"$3/bin/python" -m ruff check src tests || status=1
"$3/bin/python" -m mypy src/agentkit || status=1
"$3/bin/python" -m black --check src tests || status=1
"$3/bin/python" -m pytest tests/unit -p no:cacheprovider --junitxml=junit.xml \
    --cov=src/agentkit --cov-report=json:coverage.json -q || status=1
cd / && rm -rf "$ws"
exit $status
