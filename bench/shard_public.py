"""A public project's suite through the test job unsharded and with parallel: 2, twice
each, beside its own `python -m pytest` (docs/compatibility.md, "Sharded suites").

    git clone <pluggy mirror> /tmp/pluggy && .venv/bin/python bench/shard_public.py
"""

import shutil
import subprocess
import time
import uuid

from cicd import paths
from cicd.config import load_config
from tasks.environments import ensure_environment, tool_packages
from tasks.job import Deadline
from tasks.testing import run_suite

ws = paths.workspaces() / f"pluggy-{uuid.uuid4().hex[:6]}"
shutil.copytree("/tmp/pluggy", ws, symlinks=True)
config = load_config(ws)
name = next(iter(config.tests))
suite = config.tests[name]
env = ensure_environment(ws, config.environment, tool_packages(config, [suite])).for_workspace(ws)
reports = paths.runs() / f"pluggy-shard-{ws.name}" / "reports"
out = {}
for parallel in ("off", 2, "off", 2):
    s = suite.model_copy(update={"parallel": parallel})
    t = time.monotonic()
    r = run_suite(name, ws, env, s, reports, Deadline(900))
    out.setdefault(str(parallel), []).append(
        (round(time.monotonic() - t, 1), r.state.value, r.tests, r.coverage_percent)
    )
t = time.monotonic()
direct = subprocess.run(
    [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
    cwd=ws,
    env=env.environ(),
    capture_output=True,
    text=True,
)
print("direct pytest:", round(time.monotonic() - t, 1), "s", direct.stdout.strip().splitlines()[-1])
for k, v in out.items():
    for row in v:
        print(k, row)
shutil.rmtree(ws, ignore_errors=True)
