"""``cicd up``: a local Prefect server, the work pool, every deployment of
prefect.yaml and a worker, so pipelines run the way Prefect users run them
(``prefect deployment run``, cron schedules, the UI). ``cicd down`` stops it all.
"""

from __future__ import annotations

import argparse
import sys

from deployments.stack_state import DEFAULT_HOST, DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address the server listens on (default: {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the server and its UI (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="process workers to start (default: 1)"
    )
    parser.add_argument(
        "--runs-per-worker",
        type=int,
        metavar="N",
        help="flow runs each worker runs at once, so runs spread over the workers "
        "(prefect worker start --limit; default: $CICD_RUNS_PER_WORKER, else 2)",
    )
    parser.add_argument(
        "--server-url",
        metavar="API_URL",
        help="use this running Prefect API (http://host:4200/api) instead of starting a server",
    )
    parser.add_argument(
        "--repo",
        help="default target repository of the deployments, used by the nightly schedule "
        "(default: $CICD_REPO, else the embedded sample project)",
    )
    parser.add_argument(
        "--no-deploy",
        action="store_true",
        help="do not (re)deploy prefect.yaml; only start what is not running",
    )


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: every command's parser is built, and the stack's
    # modules (yaml, the Prefect CLI's wrappers) cost `cicd run` ~0.1 s.
    from deployments import local_stack as local_server

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = local_server.up(
        host=args.host,
        port=args.port,
        workers=args.workers,
        runs_per_worker=args.runs_per_worker,
        repo=args.repo,
        server_url=args.server_url,
        run_deploy=not args.no_deploy,
        progress=progress,
    )
    directory = local_server.state_dir()
    reused = f" (already running: {', '.join(result.reused)})" if result.reused else ""
    where = f"pid {result.server.pid}" if result.server else "not started by cicd"
    print(f"Prefect server  {result.api_url}  {where}{reused}")
    for worker in result.workers:
        print(f"worker          pool {local_server.WORK_POOL}  pid {worker.pid}")
    for name in result.deployments:
        print(f"deployment      {name}")
    if result.result_storage is not None:
        print(f"result storage  {result.result_storage.slug}  (the cache of every worker)")
    print(f"state and logs  {directory}")
    print(f"UI              {result.ui_url}")
    auth = directory / "api-auth"
    if result.server is not None and auth.is_file():
        # The path, never the value: stdout ends up in CI logs.
        print(f"API password    in {auth} (the UI asks for it; cicd reads it itself)")
    print(f"\nexport PREFECT_API_URL={result.api_url}  # for the prefect CLI")
    if result.server is not None and auth.is_file():
        print(f'export PREFECT_API_AUTH_STRING="$(cat {auth})"')
    print("stop it all with: cicd down")
    return 0
