"""The ``cicd`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cicd import __version__
from cicd.commands import baseline as baseline_command
from cicd.commands import run as run_command


def configure_prefect_defaults() -> None:
    """Defaults that make Prefect behave on an offline CI worker; the user's
    own settings win. Must run before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server takes 6-11 s to start here, more under load; the
    # default 20 s budget fails on a busy 2-core worker.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cicd", description="CI/CD pipelines as Prefect flows")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_command.add_arguments(sub.add_parser("run", help="run a pipeline now, locally"))
    baseline_command.add_arguments(
        sub.add_parser("baseline", help="measure the target's benchmarks and write a new baseline")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_prefect_defaults()
    if args.command == "run":
        return run_command.run(args)
    if args.command == "baseline":
        return baseline_command.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
