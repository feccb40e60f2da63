"""``cicd gc``: reclaim what runs whose owner died left behind.

Every ``cicd`` command does this at its start (``cicd.reclaim``); ``gc`` does
it on its own and says what it found: servers, job process groups, workspaces
and run directories of owners that are provably gone (their lock is free).
``--dry-run`` says what would be reclaimed and touches nothing. Exit 0.
"""

from __future__ import annotations

import argparse

from cicd.cli.error_handler import EXIT_PASSED, Outcome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be reclaimed; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, outcome: Outcome) -> int:
    from cicd import reclaim

    # main() skips its start-up reclaim for this command: it is all done here.
    done = reclaim.reclaim(dry_run=args.dry_run)
    if outcome.json_output:
        outcome.print_json(
            {"dry_run": args.dry_run, "reclaimed": [item.to_json() for item in done]}
        )
        return EXIT_PASSED
    verb = "would reclaim" if args.dry_run else "reclaimed"
    if not done:
        print("nothing to reclaim: no claim of a dead owner")
    for item in done:
        what = (
            ", ".join(
                [f"killed pid {pid}" for pid in item.killed]
                + [f"removed {p}" for p in item.removed]
            )
            or "record only"
        )
        if item.left:
            print(f"left {item.kind} {item.token} of {item.owner}: {item.left}")
        else:
            print(f"{verb} {item.kind} {item.token} of {item.owner}: {what}")
    return EXIT_PASSED
