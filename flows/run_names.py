"""A pipeline run's name and tags in the Prefect UI, from what it runs on:

    pr-validation · owner/repo@feature-x · 1a2b3c4   (tags repo:, branch:, event:)

Prefect names a run when it is created (``flow_run_name`` is rendered before the
flow's body starts, https://docs.prefect.io/v3/develop/write-flows), when the
commit is not known yet: a branch resolves to a commit only at checkout. So the
run is renamed, and tagged, through the client once the checkout resolved it
(``update_flow_run`` takes a name and tags). The name and tags are pure
functions of the address, the ref, the commit and how the run was started;
only :func:`name_current_run` talks to Prefect.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from cicd.git import Checkout

SHORT_SHA: Final = 7
SEPARATOR: Final = " · "
# Tags Prefect's own triggers put on the runs they create (deployments/webhook.py,
# flows/git_poller.py): the run's event.
TRIGGER_TAGS: Final = ("webhook", "git-poller")
# A Prefect tag is free text; keep ours short and on one line.
_TAG_CHARS: Final = 100
# A repo or branch in a run name: enough for owner/name and a long branch.
_LABEL_CHARS: Final = 80
# How long the flow's end waits for a rename still under way (a busy server).
RENAME_WAIT_SECONDS: Final = 10.0
_SCP_ADDRESS = re.compile(r"^[\w.-]+@[\w.-]+:(?P<path>.+)$")

_log = logging.getLogger(__name__)


def repo_label(address: str) -> str:
    """``owner/repo`` of a git address; a local repository's directory name.

    ``https://github.com/owner/repo.git``, ``git@github.com:owner/repo.git``
    and ``ssh://git@host/owner/repo`` all give ``owner/repo``.
    """
    scp = _SCP_ADDRESS.match(address)
    if scp is not None:
        path = scp.group("path")
    elif "://" in address:
        path = urllib.parse.urlsplit(address).path
    else:
        return os.path.basename(os.path.normpath(address)).removesuffix(".git") or address
    parts = [part for part in path.strip("/").removesuffix(".git").split("/") if part]
    return "/".join(parts[-2:]) if parts else address


def branch_label(ref: str) -> str:
    """The ref as people say it: ``refs/heads/x`` is ``x``, ``refs/tags/v1`` is ``v1``."""
    for prefix in ("refs/heads/", "refs/tags/", "refs/remotes/origin/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    return ref


def shown_label(text: str) -> str:
    """A label as a run name shows it: one line, at most ``_LABEL_CHARS``.

    The name is made from the run's parameters before they are validated (a
    5,000-character or multi-line repo is refused by the flow, in a log line
    that carries the run's name)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def run_name(flow: str, repo: str, ref: str, commit: str) -> str:
    where = f"{shown_label(repo_label(repo))}@{shown_label(branch_label(ref))}"
    return f"{flow}{SEPARATOR}{where}{SEPARATOR}{commit[:SHORT_SHA]}"


def planned_name(flow: str) -> Callable[[], str]:
    """A ``flow_run_name`` for the decorator: ``pr-validation · owner/repo@branch``
    from the run's parameters, until the checkout adds the commit."""

    def name() -> str:
        from prefect.runtime import flow_run

        parameters = flow_run.parameters or {}
        repo, ref = parameters.get("repo"), parameters.get("ref")
        if not repo:
            return flow
        at = f"@{shown_label(branch_label(str(ref)))}" if ref else ""
        return f"{flow}{SEPARATOR}{shown_label(repo_label(str(repo)))}{at}"

    return name


def event_of(tags: Iterable[str], deployment_id: Any, auto_scheduled: bool) -> str:
    """How the run was started: a trigger's tag, a schedule, a deployment run, or by hand."""
    tags = list(tags)
    for trigger in TRIGGER_TAGS:
        if trigger in tags:
            return trigger
    if auto_scheduled:
        return "schedule"
    return "deployment" if deployment_id is not None else "manual"


def run_tags(repo: str, ref: str, event: str) -> list[str]:
    tags = [f"repo:{repo_label(repo)}", f"branch:{branch_label(ref)}", f"event:{event}"]
    return [" ".join(tag.split())[:_TAG_CHARS] for tag in tags]


def named_ref(checkout: Checkout) -> str:
    """The ref as given, except ``HEAD``: the branch the repository's HEAD names
    (in the mirror, the remote's default branch), as a CI UI shows it."""
    if checkout.ref != "HEAD":
        return checkout.ref
    from cicd import git
    from cicd.errors import CicdError

    try:
        return git.run_in(checkout.mirror, "symbolic-ref", "--quiet", "HEAD") or checkout.ref
    except CicdError:  # a detached HEAD: no branch to name
        return checkout.ref


@contextmanager
def naming_current_run(flow: str, checkout: Checkout | None) -> Iterator[None]:
    """:func:`name_current_run` in a thread of its own while the block runs (the
    pipeline's config, environment and jobs): two requests and a git call that
    nothing in the run waits for. Joined when the block ends, so the run is
    named and tagged by the time the flow returns (a reader filters runs by
    those tags); bounded, since the name never decides anything."""
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(name_current_run, flow, checkout), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=RENAME_WAIT_SECONDS)


def name_current_run(flow: str, checkout: Checkout | None) -> str | None:
    """Rename and tag the running flow run after its checkout (a pipeline on no
    repository, ``cost-report``, is named by its day); the name, or None outside
    a flow run. A failure to rename is logged, never fatal: the name is for
    people, the verdict does not depend on it."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return None
    # One git call for the name and the tags.
    ref = named_ref(checkout) if checkout is not None else ""
    if checkout is not None:
        name = run_name(flow, checkout.repo, ref, checkout.commit)
    else:
        name = f"{flow}{SEPARATOR}{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id)
            event = event_of(current.tags, current.deployment_id, current.auto_scheduled)
            ours = (
                run_tags(checkout.repo, ref, event) if checkout is not None else [f"event:{event}"]
            )
            tags = list(dict.fromkeys([*current.tags, *ours]))
            client.update_flow_run(run_id, name=name, tags=tags)
    except Exception as exc:  # the server may be busy or gone; the run goes on
        _log.warning("could not name the run %s %r: %s", run_id, name, exc)
        return None
    return name
