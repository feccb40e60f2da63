"""Which pipeline a webhook event starts, and with which parameters.

Mapping (``tag_prefix`` is ``release.tag_prefix``, default ``v``):

* ``push`` to a branch -> ``integration`` with ``{repo, ref: after, base: before}``
  (``base`` omitted for a new branch, whose ``before`` is all zeros);
* ``pull_request`` opened/synchronize/reopened -> ``pr-validation`` with
  ``{repo: head repo clone_url, ref: head sha, base: base sha}``;
* ``push`` of ``refs/tags/<prefix>*`` or ``create`` of such a tag -> ``release``
  with ``{repo, ref: tag name}``.

Every value that becomes a parameter is checked here, before a run exists: a
signed delivery is still data from the git host, and a ``clone_url`` of
``--upload-pack=CMD@x:y`` would run CMD on the worker (see cicd.git). Clone
URLs must be remote (https, ssh, scp-like: what git hosts send), commits full
hex SHAs, tags and branches valid ref names; anything else is a 400 naming the
field.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from cicd import git
from cicd.errors import BadInput

# GitHub's payloads nest about 6 levels; anything far deeper is not a delivery.
MAX_JSON_DEPTH = 64
PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
_ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class Trigger:
    """A pipeline to start: the flow's deployment family and its parameters."""

    deployment: str
    parameters: dict[str, str]
    description: str = ""

    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.deployment, tuple(sorted(self.parameters.items())))


@dataclass(frozen=True)
class Ignored:
    reason: str


def _field(payload: Mapping[str, Any], dotted: str, event: str) -> Any:
    value: Any = payload
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise BadInput(f"{event} event: field '{dotted}' is missing")
        value = value[part]
    return value


def _text(payload: Mapping[str, Any], dotted: str, event: str) -> str:
    value = _field(payload, dotted, event)
    if not isinstance(value, str) or not value:
        raise BadInput(f"{event} event: field '{dotted}' must be a non-empty string, got {value!r}")
    return value


def _repo(payload: Mapping[str, Any], dotted: str, event: str) -> str:
    value = _text(payload, dotted, event)
    return git.check_repo_address(value, what=f"{event} event: field '{dotted}'", allow_local=False)


def _sha(payload: Mapping[str, Any], dotted: str, event: str) -> str:
    return git.check_commit_sha(
        _text(payload, dotted, event), what=f"{event} event: field '{dotted}'"
    )


def _ref_name(name: str, dotted: str, event: str) -> str:
    return git.check_ref(name, what=f"{event} event: field '{dotted}'")


def _branch_allowed(branch: str, branches: Collection[str] | None) -> bool:
    return branches is None or branch in branches


def _route_push(
    payload: Mapping[str, Any], tag_prefix: str, branches: Collection[str] | None
) -> Trigger | Ignored:
    ref = _text(payload, "ref", "push")
    deleted = bool(payload.get("deleted")) or payload.get("after") == _ZERO_SHA
    if ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
        if deleted:
            return Ignored(f"tag {tag} deleted")
        if not tag.startswith(tag_prefix):
            return Ignored(f"tag {tag} does not start with {tag_prefix!r}")
        repo = _repo(payload, "repository.clone_url", "push")
        tag = _ref_name(tag, "ref", "push")
        return Trigger("release", {"repo": repo, "ref": tag}, f"tag {tag} pushed")
    if not ref.startswith("refs/heads/"):
        return Ignored(f"push to {ref} is neither a branch nor a tag")
    branch = ref.removeprefix("refs/heads/")
    if deleted:
        return Ignored(f"branch {branch} deleted")
    if not _branch_allowed(branch, branches):
        return Ignored(f"push to branch {branch}, which is not one of {sorted(branches or [])}")
    repo = _repo(payload, "repository.clone_url", "push")
    after = _sha(payload, "after", "push")
    before = payload.get("before")
    parameters = {"repo": repo, "ref": after}
    if before is not None and before != "" and before != _ZERO_SHA:
        parameters["base"] = _sha(payload, "before", "push")
    return Trigger("integration", parameters, f"push to {branch} at {after[:12]}")


def _route_pull_request(
    payload: Mapping[str, Any], branches: Collection[str] | None
) -> Trigger | Ignored:
    action = _text(payload, "action", "pull_request")
    if action not in PR_ACTIONS:
        return Ignored(f"pull_request action {action!r} needs no run")
    target = _text(payload, "pull_request.base.ref", "pull_request")
    if not _branch_allowed(target, branches):
        return Ignored(f"pull request into {target}, which is not one of {sorted(branches or [])}")
    if _field(payload, "pull_request.head.repo", "pull_request") is None:
        return Ignored("the pull request's head repository was deleted")
    head_sha = _sha(payload, "pull_request.head.sha", "pull_request")
    number = payload.get("number", _field(payload, "pull_request", "pull_request").get("number"))
    head_repo = _repo(payload, "pull_request.head.repo.clone_url", "pull_request")
    head_ref = _text(payload, "pull_request.head.ref", "pull_request")
    head_ref = _ref_name(head_ref, "pull_request.head.ref", "pull_request")
    parameters: dict[str, Any] = {
        "repo": head_repo,
        "ref": head_sha,
        "base": _sha(payload, "pull_request.base.sha", "pull_request"),
        # cancel-in-progress: a newer push to the same branch cancels this run.
        "group": f"{head_repo}#{head_ref}",
    }
    base_repo = _field(payload, "pull_request.base.repo", "pull_request")
    if not isinstance(base_repo, Mapping) or base_repo.get("clone_url") != head_repo:
        # A pull request from a fork runs code nobody here reviewed: no secret
        # reaches it, as GitHub passes none to workflows of such pull requests
        # (https://docs.github.com/en/actions/security-for-github-actions/security-guides/using-secrets-in-github-actions).
        parameters["untrusted"] = True
    summary = f"pull request #{number} {action} at {head_sha[:12]}"
    return Trigger("pr-validation", parameters, summary)


def _route_create(payload: Mapping[str, Any], tag_prefix: str) -> Trigger | Ignored:
    ref_type = _text(payload, "ref_type", "create")
    ref = _text(payload, "ref", "create")
    if ref_type != "tag":
        return Ignored(f"create of {ref_type} {ref} needs no run")
    if not ref.startswith(tag_prefix):
        return Ignored(f"tag {ref} does not start with {tag_prefix!r}")
    repo = _repo(payload, "repository.clone_url", "create")
    ref = _ref_name(ref, "ref", "create")
    return Trigger("release", {"repo": repo, "ref": ref}, f"tag {ref} created")


def route_event(
    event: str,
    payload: Mapping[str, Any],
    tag_prefix: str = "v",
    branches: Collection[str] | None = None,
) -> Trigger | Ignored:
    """Map one webhook event to a pipeline run, or say why it needs none.

    ``branches`` limits pushes (and pull requests, by target branch) to those
    branches; ``None`` accepts all. Raises BadInput naming a missing field.
    """
    if event == "push":
        return _route_push(payload, tag_prefix, branches)
    if event == "pull_request":
        return _route_pull_request(payload, branches)
    if event == "create":
        return _route_create(payload, tag_prefix)
    if event == "ping":
        return Ignored("ping: the hook is set up")
    return Ignored(f"event {event!r} is not handled")


def parse_event(
    event: str,
    payload: Mapping[str, Any],
    tag_prefix: str = "v",
    branches: Collection[str] | None = None,
) -> Trigger | None:
    """The trigger of an event, or None when it starts nothing (see route_event)."""
    routed = route_event(event, payload, tag_prefix, branches)
    return routed if isinstance(routed, Trigger) else None


def decode_body(body: bytes, content_type: str) -> Any:
    """The payload of a delivery: JSON, or GitHub's form encoding ``payload=<json>``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("body is not UTF-8") from None
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        values = parse_qs(text).get("payload")
        if not values:
            raise BadInput("form-encoded body has no 'payload' field")
        text = values[0]
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"body is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        # json's C scanner stops at the interpreter's recursion limit (about 1000
        # levels): a 100k-deep body lands here, in microseconds, as a 400.
        raise BadInput(f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise BadInput(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest
