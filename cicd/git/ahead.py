"""A checkout started before its flow run exists, taken by the run's checkout task.

Why: between the call of a flow and its first statement, Prefect's engine makes
its client and about ten API calls (create the flow and the run, set it
Running, read it back, the result storage...), 0.13-0.19 s on a 2-core machine
during which the run can do nothing else; the checkout that follows (mirror
fetch, clone, checkout: six git processes) took 0.09-0.11 s more
(bench/README.md, issue 15). The two do not depend on each other: the CLI,
which knows the repository and the ref before it calls the flow, starts the
checkout in a thread first, and the flow's ``checkout`` task (tasks/checkout.py)
takes the result, or its error, as if it had made it. A task retry, a worker's
run or any other (repo, ref) checks out as before.

What is checked out ahead and never taken (the run failed before its checkout)
is removed by :func:`discard`, which the CLI calls when the run ends.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from cicd.git import Checkout, checkout, remove_workspace

_lock = threading.Lock()
_pending: dict[tuple[str, str], Future[Checkout]] = {}


def _check_out(repo: str, ref: str, future: Future[Checkout]) -> None:
    try:
        future.set_result(checkout(repo, ref))
    except BaseException as exc:  # handed to the task that takes it, raised there
        future.set_exception(exc)


def start(repo: str, ref: str) -> None:
    """Begin ``checkout(repo, ref)`` in a thread of its own, now."""
    future: Future[Checkout] = Future()
    with _lock:
        if (repo, ref) in _pending:
            return
        _pending[(repo, ref)] = future
    threading.Thread(
        target=_check_out, args=(repo, ref, future), name="cicd-checkout-ahead", daemon=True
    ).start()


def take(repo: str, ref: str) -> Checkout | None:
    """The checkout started ahead for ``(repo, ref)``, once it is done; None when
    none was. Its error, when it failed, is raised here as ``checkout``'s own."""
    with _lock:
        future = _pending.pop((repo, ref), None)
    return None if future is None else future.result()


def discard() -> None:
    """Remove the workspaces checked out ahead that no task took."""
    with _lock:
        futures = list(_pending.values())
        _pending.clear()
    for future in futures:
        if future.exception() is None:
            remove_workspace(future.result().path)
