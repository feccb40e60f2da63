"""The ``cicd`` command line.

Nothing imported at module level here (or by the command modules' top level)
imports Prefect: Prefect reads its settings once, at its first import, so
``main()`` puts our defaults in the environment first and the commands import
flows, tasks and Prefect inside their handlers (``tests/test_cli.py`` checks
that ``cicd --help`` leaves ``prefect`` out of ``sys.modules``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from cicd import __version__, command
from cicd.cli import prefect_settings
from cicd.cli.commands import baseline, deploy, down, gc, run, up, webhook
from cicd.cli.error_handler import Outcome, error_handler
from cicd.errors import BadInput


class UsageError(BadInput):
    """A command line argparse refused."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors go through the error handler (exit 2,
    and one JSON object with ``--json``) instead of exiting on its own."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        # "run release: argument --ref: ..." for a subcommand, the bare message at the top.
        where = self.prog.removeprefix("cicd").strip()
        raise UsageError(f"{where}: {message}" if where else message)


def _run_command(args: argparse.Namespace, outcome: Outcome) -> int:
    return run.run(args, outcome)


def _simple(handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    def call(args: argparse.Namespace, outcome: Outcome) -> int:
        del outcome
        return handler(args)

    return call


# name -> (help, add_arguments, handler); the handler gets the parsed arguments
# and the error handler's outcome (for ``--json``).
COMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]],
] = {
    "run": ("run a pipeline now, locally", run.add_arguments, _run_command),
    "baseline": (
        "measure the target's benchmarks and write a new baseline",
        baseline.add_arguments,
        _simple(baseline.run),
    ),
    "up": (
        "start a local Prefect server, deployments and a worker",
        up.add_arguments,
        _simple(up.run),
    ),
    "down": ("stop what `cicd up` started", down.add_arguments, _simple(down.run)),
    "deploy": (
        "roll an environment back to its previous release, show or stop it",
        deploy.add_arguments,
        _simple(deploy.run),
    ),
    "webhook": (
        "receive git host webhooks and start deployments",
        webhook.add_arguments,
        _simple(webhook.run),
    ),
    "gc": (
        "reclaim servers, processes and workspaces of runs whose owner died",
        gc.add_arguments,
        gc.run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cicd", description="CI/CD pipelines as Prefect flows")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _handler) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def terminate(signum: int, frame: object) -> None:
    # Without this, SIGTERM ends the process without running any `finally`:
    # job process groups and service JVMs (each in a session of its own)
    # would survive. Raising unwinds the flow; kill_all stops what it started.
    command.kill_all(close=True)
    raise SystemExit(128 + signum)


def wants_json(argv: Sequence[str]) -> bool:
    # Known before parsing, so a command line argparse refuses still gets its object.
    return "--json" in argv


def flow_name(argv: Sequence[str]) -> str | None:
    from flows.registry import PIPELINES

    words = [word for word in argv if not word.startswith("-")]
    if len(words) >= 2 and words[0] == "run" and words[1] in PIPELINES:
        return words[1]
    return None


def _reclaim_leftovers() -> None:
    """What SIGKILLed runs left (servers, job groups, workspaces): cheap, a
    listing and a non-blocking flock per record (``cicd.reclaim``)."""
    from cicd import reclaim

    try:
        done = reclaim.reclaim()
    except OSError as exc:  # never the reason a command fails
        print(f"cicd: warning: reclaiming leftovers failed: {exc}", file=sys.stderr)
        return
    for item in done:
        if not item.left:
            print(
                f"cicd: reclaimed {item.kind} of dead owner {item.owner}: killed "
                f"{list(item.killed)}, removed {list(item.removed)}",
                file=sys.stderr,
            )


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, before anything imports Prefect.
    prefect_settings.apply_defaults()
    arguments = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    with error_handler(wants_json(arguments), flow_name(arguments)) as outcome:
        args = build_parser().parse_args(arguments)
        args.argv = arguments  # what `cicd run` hands to the warm runner's child
        if args.command != "gc":  # gc does it itself, and reports it
            _reclaim_leftovers()
        outcome.code = COMMANDS[args.command][2](args, outcome)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
