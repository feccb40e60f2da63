"""Benchmark: what `environment.install_project` adds to a run's environment step.

The environment itself is built once, before the rounds (every run reuses it
while the dependency inputs are unchanged). Each round then times, interleaved
so background load hits both alike, on a fresh checkout of the sample target:

- ``pythonpath``: ``ensure_environment`` as shipped (the commit on PYTHONPATH);
- ``install``: the same with ``install_project: true`` (a build of the commit
  and a ``--no-deps --target`` install beside the workspace);
- ``unit-tests``: the sample's unit tests (``pytest tests/unit``) in that
  environment, the baseline that gives the added second its scale.

    .venv/bin/python bench/install_project.py [--runs 7]

Prints a Markdown table and writes JSON to bench/results/install_project.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    os.environ["CICD_HOME"] = tempfile.mkdtemp(prefix="bench-install-")
    from cicd import command
    from cicd.config import load_config
    from cicd.git import checkout, remove_workspace
    from cicd.sample import create_sample_repo
    from tasks.environments import ensure_environment

    repo = create_sample_repo(Path(os.environ["CICD_HOME"]) / "agentkit")
    warm = checkout(str(repo), "main")
    config = load_config(warm.path).environment
    installed = config.model_copy(update={"install_project": True})
    ensure_environment(warm.path, config)  # the shared environment, built once
    ensure_environment(warm.path, installed)  # uv's cache holds the build backend from here
    remove_workspace(warm.path)

    seconds: dict[str, list[float]] = {"pythonpath": [], "install": [], "unit-tests": []}
    for _ in range(args.runs):
        for variant, env_config in (("pythonpath", config), ("install", installed)):
            work = checkout(str(repo), "main")
            started = time.perf_counter()
            env = ensure_environment(work.path, env_config)
            seconds[variant].append(time.perf_counter() - started)
            assert env.reused
            if variant == "pythonpath":
                argv = [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                started = time.perf_counter()
                result = command.run([*argv, "tests/unit"], cwd=work.path, env=env.environ())
                seconds["unit-tests"].append(time.perf_counter() - started)
                assert result.ok, result.tail(20)
            remove_workspace(work.path)

    medians = {variant: statistics.median(values) for variant, values in seconds.items()}
    print(f"{args.runs} rounds, {platform.node()}, Python {platform.python_version()}\n")
    print("| variant | median s | min s | max s |")
    print("|---|---|---|---|")
    for variant, values in seconds.items():
        print(f"| {variant} | {medians[variant]:.3f} | {min(values):.3f} | {max(values):.3f} |")
    added = medians["install"] - medians["pythonpath"]
    ratio = added / medians["unit-tests"]
    print(f"\ninstall_project adds {added:.2f} s per run (median), {ratio:.2f}x the unit tests")

    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "install_project.json").write_text(
        json.dumps({"runs": args.runs, "seconds": seconds, "medians": medians}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
