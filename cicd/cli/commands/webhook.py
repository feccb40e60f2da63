"""``cicd webhook``: serve the GitHub-style webhook receiver (deployments/webhook.py)
and start the matching deployment for each verified event.

The secret comes from an environment variable (``--secret-env NAME``) or a
Prefect Secret block (``--secret-block NAME``), never from the command line,
where it would show in ``ps`` and shell history.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
from pathlib import Path

from cicd.errors import BadInput

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default: {DEFAULT_PORT})",
    )
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument(
        "--secret-env", metavar="NAME", help="environment variable holding the webhook secret"
    )
    secret.add_argument(
        "--secret-block", metavar="NAME", help="Prefect Secret block holding the webhook secret"
    )
    parser.add_argument(
        "--tag-prefix", default="v", help="tags starting with this start a release (default: v)"
    )
    parser.add_argument(
        "--branch",
        action="append",
        dest="branches",
        metavar="NAME",
        help="only pushes to (and pull requests into) this branch; repeatable "
        "(default: every branch)",
    )
    parser.add_argument(
        "--deployment-template",
        default="{flow}/{flow}",
        help="deployment started per flow (default: {flow}/{flow})",
    )
    parser.add_argument(
        "--deliveries-db",
        metavar="PATH",
        help="SQLite file remembering delivery ids and their runs across restarts "
        "(default: $CICD_HOME/webhook/deliveries.db)",
    )


def resolve_api_url() -> str:
    """The address every command uses (cicd/cli/prefect_address.py). Without
    one, each delivery would boot a throwaway Prefect server that no worker watches."""
    from cicd.cli import prefect_address

    address = prefect_address.current()
    if address is None:
        raise BadInput(
            "no Prefect server to start runs on: set PREFECT_API_URL or run `cicd up` first"
        )
    return address.url


def read_secret(args: argparse.Namespace) -> str:
    if args.secret_env:
        value = os.environ.get(args.secret_env, "")
        if not value:
            raise BadInput(f"--secret-env {args.secret_env}: the variable is not set or empty")
        return value
    from prefect.blocks.system import Secret

    try:
        # Synchronous here (no event loop runs); Prefect types it as maybe a coroutine.
        block: Secret[str] = Secret.load(args.secret_block)  # type: ignore[assignment]
    except ValueError as exc:
        raise BadInput(f"--secret-block {args.secret_block}: {exc}") from None
    value = block.get()
    if not isinstance(value, str) or not value:
        raise BadInput(f"--secret-block {args.secret_block}: the secret is empty or not a string")
    return value


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise BadInput(f"--port {args.port}: expected 0-65535")
    # main() has put it in PREFECT_API_URL before anything imported Prefect.
    api_url = resolve_api_url()
    secret = read_secret(args)
    from prefect.settings import get_current_settings

    # What Prefect itself will use, printed: the address a delivery goes to.
    in_effect = get_current_settings().api.url or "a temporary server"
    if in_effect != api_url:
        raise BadInput(f"Prefect uses {in_effect}, not {api_url}: PREFECT_API_URL came too late")

    from deployments.webhook import make_server, start_with_prefect
    from deployments.webhook_store import DeliveryStore, default_path

    start = start_with_prefect(args.deployment_template)
    db = Path(args.deliveries_db) if args.deliveries_db else default_path()
    try:
        store = DeliveryStore(db)
    except sqlite3.Error as exc:
        raise BadInput(f"--deliveries-db {db}: {exc}") from None
    try:
        server = make_server(
            args.host, args.port, secret, start, args.tag_prefix, args.branches, store=store
        )
    except OSError as exc:
        store.close()
        raise BadInput(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The first line tells a supervisor (or a test) where it listens, port 0 included.
    print(f"webhook receiver listening on {server.url} (Prefect API {in_effect})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
