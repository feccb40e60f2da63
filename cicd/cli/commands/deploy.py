"""``cicd deploy rollback ENV``: the previous release back, by hand;
``cicd deploy status ENV``: what is live there; ``cicd deploy stop ENV``: stop
its proxy and replicas. The project is the only one deployed to ENV unless
``--project`` names it."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("rollback", "status", "stop"))
    parser.add_argument("environment", help="a deploy.environments name of cicd.yaml")
    parser.add_argument("--project", help="the distribution name (default: the only one)")
    parser.add_argument("--reason", default="rolled back by hand", help="recorded in the history")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from tasks.deploy import environment as deploys
    from tasks.deploy.state import EnvironmentState, find_project

    project = find_project(args.environment, args.project)
    state: EnvironmentState | None
    if args.action == "rollback":
        state = deploys.rollback_environment(project, args.environment, args.reason)
    elif args.action == "stop":
        deploys.stop_environment(project, args.environment)
        state = EnvironmentState.load(project, args.environment)
    else:
        state = EnvironmentState.load(project, args.environment)
    live = state.live if state else None
    summary = {
        "project": project,
        "environment": args.environment,
        "live": live.release.id if live else None,
        "ports": live.ports if live else [],
        "proxy_port": state.proxy_port if state else None,
        "previous": state.previous.id if state and state.previous else None,
    }
    print(
        json.dumps(summary)
        if args.json
        else f"{args.environment}: {summary['live'] or 'nothing'} live "
        f"(proxy 127.0.0.1:{summary['proxy_port']}; previous {summary['previous']})"
    )
    return 0
