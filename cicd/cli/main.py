"""The ``cicd`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from cicd import __version__, command
from cicd.cli.commands import baseline as baseline_command
from cicd.cli.commands import down as down_command
from cicd.cli.commands import run as run_command
from cicd.cli.commands import up as up_command
from cicd.cli.commands import webhook as webhook_command


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
    up_command.add_arguments(
        sub.add_parser("up", help="start a local Prefect server, deployments and a worker")
    )
    down_command.add_arguments(sub.add_parser("down", help="stop what `cicd up` started"))
    webhook_command.add_arguments(
        sub.add_parser("webhook", help="receive git host webhooks and start deployments")
    )
    return parser


def _terminate(signum: int, frame: object) -> None:
    # Without this, SIGTERM ends the process without running any `finally`:
    # job process groups and service JVMs (each in a session of its own)
    # would survive. Raising unwinds the flow; kill_all stops what it started.
    command.kill_all(close=True)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_prefect_defaults()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        return dispatch(parser, args)
    except KeyboardInterrupt:
        command.kill_all(close=True)
        print("cicd: interrupted", file=sys.stderr)
        return 130


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "run":
        return run_command.run(args)
    if args.command == "baseline":
        return baseline_command.run(args)
    if args.command == "up":
        return up_command.run(args)
    if args.command == "down":
        return down_command.run(args)
    if args.command == "webhook":
        return webhook_command.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
