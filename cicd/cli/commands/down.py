"""``cicd down``: stop what ``cicd up`` started, workers before the server, by pid,
the local server ``cicd run`` started (deployments/run_server.py) and its warm
runner (cicd/cli/warm_runner.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: it stops exactly what the state directory records


def run(args: argparse.Namespace) -> int:
    del args
    from cicd.cli import warm_client
    from deployments import local_stack as local_server
    from deployments import run_server

    results = local_server.down() + run_server.stop() + warm_client.stop()
    if not results:
        print(f"nothing to stop: no local stack is recorded in {local_server.state_dir()}")
        return 0
    for result in results:
        print(f"{result.role:<16} pid {result.pid:<8} {result.outcome}")
    return 0
