"""The webhook receiver: a real server on a free port, real signed requests via httpx."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from cicd.errors import BadInput
from deployments.webhook import (
    Ignored,
    Trigger,
    WebhookServer,
    make_server,
    parse_event,
    route_event,
    start_with_prefect,
    verify_signature,
)

SECRET = "webhook-test-secret"
BASE_REPO = "https://git.example.com/acme/app.git"
FORK_REPO = "https://git.example.com/alice/app.git"
SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40


class Recorder:
    """The injected ``start``: records calls, answers a run id, or fails on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        with self.lock:
            self.calls.append((deployment, parameters))
            return f"run-{len(self.calls)}"


def serve_in_thread(server: WebhookServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return thread


def stop(server: WebhookServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)
    assert not thread.is_alive()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def receiver(recorder: Recorder) -> Iterator[WebhookServer]:
    server = make_server("127.0.0.1", 0, SECRET, recorder)
    thread = serve_in_thread(server)
    yield server
    stop(server, thread)


def signature(body: bytes, secret: str = SECRET) -> str:
    # Computed independently of deployments.webhook.sign, as the git host would.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(
    server: WebhookServer,
    event: str | None,
    payload: Any = None,
    *,
    body: bytes | None = None,
    sign_with: str | None = SECRET,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    raw = body if body is not None else json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json", "X-GitHub-Delivery": str(uuid.uuid4())}
    if event is not None:
        all_headers["X-GitHub-Event"] = event
    if sign_with is not None:
        all_headers["X-Hub-Signature-256"] = signature(raw, sign_with)
    all_headers.update(headers or {})
    return httpx.post(server.url + "hook", content=raw, headers=all_headers, timeout=10)


def push(ref: str, before: str = SHA_A, after: str = SHA_B, **extra: Any) -> dict[str, Any]:
    return {"ref": ref, "before": before, "after": after,
            "repository": {"clone_url": BASE_REPO, "full_name": "acme/app"}, **extra}


def pull_request(action: str, base_ref: str = "main") -> dict[str, Any]:
    return {
        "action": action,
        "number": 42,
        "pull_request": {
            "number": 42,
            "head": {"sha": SHA_C, "ref": "feature", "repo": {"clone_url": FORK_REPO}},
            "base": {"sha": SHA_A, "ref": base_ref, "repo": {"clone_url": BASE_REPO}},
        },
        "repository": {"clone_url": BASE_REPO},
    }


# ------------------------------------------------------------------ over HTTP


def test_signed_push_starts_integration(receiver: WebhookServer, recorder: Recorder) -> None:
    response = post(receiver, "push", push("refs/heads/main"))
    assert response.status_code == 202, response.text
    assert response.json()["flow_run_id"] == "run-1"
    assert response.json()["status"] == "started"
    assert recorder.calls == [("integration", {"repo": BASE_REPO, "ref": SHA_B, "base": SHA_A})]


def test_wrong_signature_is_401_and_starts_nothing(
    receiver: WebhookServer, recorder: Recorder
) -> None:
    response = post(receiver, "push", push("refs/heads/main"), sign_with="not-the-secret")
    assert response.status_code == 401
    # A body changed after signing is rejected too.
    body = json.dumps(push("refs/heads/main")).encode()
    tampered = body.replace(SHA_B.encode(), SHA_C.encode())
    response = post(receiver, "push", body=tampered, sign_with=None,
                    headers={"X-Hub-Signature-256": signature(body)})
    assert response.status_code == 401
    assert recorder.calls == []


def test_missing_signature_is_401(receiver: WebhookServer, recorder: Recorder) -> None:
    response = post(receiver, "push", push("refs/heads/main"), sign_with=None)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert recorder.calls == []


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened"])
def test_pull_request_starts_pr_validation_on_the_head_repo(
    receiver: WebhookServer, recorder: Recorder, action: str
) -> None:
    response = post(receiver, "pull_request", pull_request(action))
    assert response.status_code == 202, response.text
    # From a fork: untrusted, no secret reaches it.
    assert recorder.calls == [
        (
            "pr-validation",
            {"repo": FORK_REPO, "ref": SHA_C, "base": SHA_A, "group": f"{FORK_REPO}#feature",
             "untrusted": True},
        )
    ]  # fmt: skip


def test_pull_request_from_a_branch_of_the_same_repo_is_trusted(
    receiver: WebhookServer, recorder: Recorder
) -> None:
    event = pull_request("opened")
    event["pull_request"]["head"]["repo"] = {"clone_url": BASE_REPO}

    response = post(receiver, "pull_request", event)

    assert response.status_code == 202, response.text
    assert recorder.calls == [
        (
            "pr-validation",
            {"repo": BASE_REPO, "ref": SHA_C, "base": SHA_A, "group": f"{BASE_REPO}#feature"},
        )
    ]


def test_closed_pull_request_is_ignored(receiver: WebhookServer, recorder: Recorder) -> None:
    response = post(receiver, "pull_request", pull_request("closed"))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert "closed" in response.json()["reason"]
    assert recorder.calls == []


def test_tag_push_and_create_start_one_release(
    receiver: WebhookServer, recorder: Recorder
) -> None:
    first = post(receiver, "push", push("refs/tags/v1.2.0", before="0" * 40, after=SHA_B))
    second = post(receiver, "create", {"ref": "v1.2.0", "ref_type": "tag",
                                       "repository": {"clone_url": BASE_REPO}})
    assert first.status_code == 202, first.text
    assert recorder.calls == [("release", {"repo": BASE_REPO, "ref": "v1.2.0"})]
    # GitHub sends both for one tag push: the second is answered with the same run.
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert second.json()["flow_run_id"] == first.json()["flow_run_id"]


def test_create_of_a_tag_alone_starts_a_release(
    receiver: WebhookServer, recorder: Recorder
) -> None:
    response = post(receiver, "create", {"ref": "v2.0.0", "ref_type": "tag",
                                         "repository": {"clone_url": BASE_REPO}})
    assert response.status_code == 202
    assert recorder.calls == [("release", {"repo": BASE_REPO, "ref": "v2.0.0"})]


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("issues", {"action": "opened"}, "event 'issues' is not handled"),
        ("ping", {"zen": "hi"}, "ping"),
        ("push", push("refs/tags/nightly-5"), "does not start with 'v'"),
        ("push", push("refs/heads/old", after="0" * 40, deleted=True), "branch old deleted"),
        ("create", {"ref": "feature", "ref_type": "branch",
                    "repository": {"clone_url": BASE_REPO}}, "create of branch"),
    ],
)
def test_other_events_are_ignored_with_a_reason(
    receiver: WebhookServer, recorder: Recorder, event: str, payload: Any, reason: str
) -> None:
    response = post(receiver, event, payload)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert recorder.calls == []


def test_malformed_json_is_400(receiver: WebhookServer, recorder: Recorder) -> None:
    response = post(receiver, "push", body=b'{"ref": "refs/heads/main",')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    response = post(receiver, "push", body=b"[1, 2]")
    assert response.status_code == 400
    assert recorder.calls == []


def test_missing_field_is_400_naming_it(receiver: WebhookServer, recorder: Recorder) -> None:
    payload = push("refs/heads/main")
    del payload["repository"]["clone_url"]
    response = post(receiver, "push", payload)
    assert response.status_code == 400
    assert "repository.clone_url" in response.json()["error"]
    assert recorder.calls == []


def test_missing_event_header_is_400(receiver: WebhookServer) -> None:
    assert post(receiver, None, push("refs/heads/main")).status_code == 400


def test_form_encoded_delivery_is_accepted(receiver: WebhookServer, recorder: Recorder) -> None:
    body = urlencode({"payload": json.dumps(push("refs/heads/main"))}).encode()
    response = post(receiver, "push", body=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 202, response.text
    assert recorder.calls[0][0] == "integration"


def test_failing_start_is_502_and_can_be_redelivered(
    receiver: WebhookServer, recorder: Recorder
) -> None:
    recorder.fail_with = RuntimeError("prefect server unreachable")
    response = post(receiver, "push", push("refs/heads/main"))
    assert response.status_code == 502
    assert "prefect server unreachable" in response.json()["error"]
    recorder.fail_with = None
    # The failure was not remembered as a started run: the redelivery starts it.
    assert post(receiver, "push", push("refs/heads/main")).status_code == 202
    assert len(recorder.calls) == 1


def test_oversized_body_is_413_and_not_started(recorder: Recorder) -> None:
    server = make_server("127.0.0.1", 0, SECRET, recorder, max_body=1024)
    thread = serve_in_thread(server)
    try:
        payload = push("refs/heads/main", padding="x" * 4096)
        response = post(server, "push", payload)
        assert response.status_code == 413
        # A body under the limit still works on the same server.
        assert post(server, "push", push("refs/heads/main")).status_code == 202
    finally:
        stop(server, thread)
    assert len(recorder.calls) == 1


def test_default_limit_is_5_mb(receiver: WebhookServer, recorder: Recorder) -> None:
    body = b" " * (5 * 1024 * 1024 + 1)  # whitespace: it would parse as nothing
    response = post(receiver, "push", body=body)
    assert response.status_code == 413
    assert "exceeds 5242880" in response.json()["error"]
    assert recorder.calls == []


def test_branch_filter(recorder: Recorder) -> None:
    server = make_server("127.0.0.1", 0, SECRET, recorder, branches=["main"])
    thread = serve_in_thread(server)
    try:
        assert post(server, "push", push("refs/heads/feature")).json()["status"] == "ignored"
        assert post(server, "pull_request", pull_request("opened", "dev")).status_code == 200
        assert post(server, "push", push("refs/heads/main")).status_code == 202
    finally:
        stop(server, thread)
    assert [call[0] for call in recorder.calls] == ["integration"]


def test_health(receiver: WebhookServer) -> None:
    assert httpx.get(receiver.url + "health").json() == {"status": "ok"}


def test_empty_secret_is_refused(recorder: Recorder) -> None:
    with pytest.raises(BadInput, match="secret is empty"):
        make_server("127.0.0.1", 0, "", recorder)


# ------------------------------------------------------------------- pure parts


def test_verify_signature_variants() -> None:
    body = b'{"a": 1}'
    good = signature(body)
    assert verify_signature(SECRET, body, good)
    assert verify_signature(SECRET.encode(), body, good.upper().replace("SHA256=", "sha256="))
    assert not verify_signature(SECRET, body, good[:-1] + ("0" if good[-1] != "0" else "1"))
    assert not verify_signature(SECRET, body, good.replace("sha256=", "sha1="))
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "")
    assert not verify_signature(SECRET, body, "sha256=\u00e9\u00e9")  # non-ASCII: no crash


def test_new_branch_push_has_no_base() -> None:
    trigger = parse_event("push", push("refs/heads/feature", before="0" * 40, created=True))
    assert trigger == Trigger(
        "integration", {"repo": BASE_REPO, "ref": SHA_B}, f"push to feature at {SHA_B[:12]}"
    )


def test_route_event_custom_tag_prefix() -> None:
    assert isinstance(route_event("push", push("refs/tags/v1.0.0"), tag_prefix="release-"), Ignored)
    routed = route_event("push", push("refs/tags/release-1.0"), tag_prefix="release-")
    assert isinstance(routed, Trigger) and routed.parameters["ref"] == "release-1.0"
    assert parse_event("issues", {}) is None


def test_deleted_head_repository_is_ignored() -> None:
    payload = pull_request("synchronize")
    payload["pull_request"]["head"]["repo"] = None
    routed = route_event("pull_request", payload)
    assert isinstance(routed, Ignored) and "deleted" in routed.reason


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("repository.clone_url", "--upload-pack=touch pwned@x:y", "starts with '-'"),
        ("repository.clone_url", "ext::sh -c touch% pwned", "transport"),
        ("repository.clone_url", "/srv/git/app.git", "must be a remote URL"),
        ("repository.clone_url", "http://git.example.com/a.git", "scheme"),
        ("after", "--output=pwned", "full hex commit SHA"),
        ("before", "HEAD~1", "full hex commit SHA"),
    ],
)
def test_push_values_are_checked_before_a_trigger_exists(field: str, value: str, why: str) -> None:
    payload = push("refs/heads/main")
    if field == "repository.clone_url":
        payload["repository"]["clone_url"] = value
    else:
        payload[field] = value
    with pytest.raises(BadInput, match=rf"push event: field '{re.escape(field)}' .*{why}"):
        route_event("push", payload)


def test_tag_and_branch_names_must_be_valid_refs() -> None:
    with pytest.raises(BadInput, match=r"field 'ref' 'v1\.\.2'"):
        route_event("push", push("refs/tags/v1..2"))
    payload = pull_request("opened")
    payload["pull_request"]["head"]["ref"] = "-x"
    with pytest.raises(BadInput, match=r"pull_request\.head\.ref"):
        route_event("pull_request", payload)
    # What git hosts send is still accepted: https, ssh and scp-like addresses.
    for url in ("ssh://git@git.example.com/acme/app.git", "git@git.example.com:acme/app.git"):
        payload = push("refs/heads/main")
        payload["repository"]["clone_url"] = url
        assert isinstance(route_event("push", payload), Trigger)


# ------------------------------------------------------------ start_with_prefect


def test_start_with_prefect_creates_a_flow_run(prefect_server: str) -> None:
    from prefect.client.orchestration import get_client

    # Unique names: nothing else in the session may pick this run up.
    family = f"webhook-probe-{uuid.uuid4().hex[:8]}"
    start = start_with_prefect(f"{family}-{{flow}}/{{flow}}")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"{family}-pr-validation")
        deployment_id = client.create_deployment(flow_id=flow_id, name="pr-validation")
        try:
            parameters = {"repo": FORK_REPO, "ref": SHA_C, "base": SHA_A}
            run_id = start("pr-validation", parameters)
            flow_run = client.read_flow_run(uuid.UUID(run_id))
            assert flow_run.deployment_id == deployment_id
            assert flow_run.parameters == parameters
            assert "webhook" in flow_run.tags
            assert flow_run.state is not None and flow_run.state.is_scheduled()
            client.delete_flow_run(flow_run.id)
        finally:
            client.delete_deployment(deployment_id)
        with pytest.raises(BadInput, match=f"'{family}-release/release' not found"):
            start("release", {"repo": BASE_REPO, "ref": "v1.0.0"})


def test_start_with_prefect_template_must_name_flow_and_deployment() -> None:
    with pytest.raises(BadInput, match="must be '<flow>/<deployment>'"):
        start_with_prefect("just-a-name")
