"""``cicd baseline``: measure the target's benchmarks and write a new baseline.

Runs on an isolated checkout of ``repo@ref`` in the target's environment, the
same way the performance-baseline stage measures, and writes the baseline
file for the user to review and commit (into the local repository's working
tree when ``--repo`` is a path, or to ``--output``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cicd.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="path or URL of the target repository")
    parser.add_argument("--ref", default="HEAD", help="the commit to measure (default: HEAD)")
    parser.add_argument("--output", type=Path, help="where to write the baseline JSON")
    parser.add_argument("--rounds", type=int, help="rounds to run (default: benchmarks.rounds)")


def run(args: argparse.Namespace) -> int:
    # Imported here: tasks import Prefect, whose settings main() sets first.
    from cicd.config import load_config
    from cicd.git import checkout, is_remote, remove_workspace
    from tasks import benchmark_baseline, benchmarks
    from tasks.environments import ensure_environment, tool_packages

    work = checkout(args.repo, args.ref)
    try:
        config = load_config(work.path)
        if config.benchmarks is None:
            raise BadInput("cicd.yaml: field 'benchmarks': not configured in the target")
        output = args.output
        if output is None:
            if is_remote(args.repo):
                raise BadInput("--output is required when --repo is a URL")
            output = Path(work.repo) / config.benchmarks.baseline
        env = ensure_environment(work.path, config.environment, tool_packages(config))
        rounds = benchmarks.run_benchmarks(
            env.python,
            work.path,
            config.benchmarks.paths,
            args.rounds or config.benchmarks.rounds,
            env.environ(),
            work.path / ".cicd-benchmarks",
            config.benchmarks.timeout,
        )
        data = benchmark_baseline.baseline_from_runs(rounds)
        written = benchmark_baseline.write_baseline(output, data)
    finally:
        remove_workspace(work.path)
    print(f"wrote {written} ({len(rounds)} rounds, {len(rounds[0]) if rounds else 0} benchmarks)")
    return 0
