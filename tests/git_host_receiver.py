"""Local git host APIs on 127.0.0.1 that check every request against the host's
published description, for the commit status tests.

GitHub: each request is matched to an operation of GitHub's OpenAPI
description (``@octokit/openapi``, fetched by ``scripts/provision-github-openapi``
into a cache outside the repository), and its method, path parameters and JSON
body are validated against that operation's schemas; the answer is the
operation's own published example. GitLab publishes no OpenAPI description of
``POST /projects/:id/statuses/:sha`` that we can fetch from a registry, so its
request is validated against the fields documented at
https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit,
written down below as a JSON schema.

A request with another token than the receiver's gets 401 and the host's own
error body, as an expired token does.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.conftest import REPO_ROOT
from tests.receiver import serving

GITHUB_SPEC_URI = "urn:github-openapi"
GITHUB_BAD_CREDENTIALS = {
    "message": "Bad credentials",
    "documentation_url": "https://docs.github.com/rest",
    "status": "401",
}
GITLAB_UNAUTHORIZED = {"message": "401 Unauthorized"}


def github_spec_path() -> Path:
    """Where the description is cached; fetched once when missing."""
    path = Path(os.environ["CICD_GITHUB_OPENAPI"])
    if not path.is_file():
        subprocess.run(
            [str(REPO_ROOT / "scripts" / "provision-github-openapi"), str(path.parent)],
            check=True,
            timeout=600,
        )
    return path


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``null`` type, everywhere."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@dataclass(frozen=True)
class Operation:
    method: str
    template: str  # /repos/{owner}/{repo}/statuses/{sha}
    operation_id: str
    parameters: dict[str, Any]  # path parameter name -> JSON schema
    body: Any  # JSON schema of the request body, or None
    status: int  # the success answer's code
    answer: Any  # the published example of the success answer


@dataclass
class ApiDescription:
    """Operations by (method, path regex); schemas resolve inside ``registry``."""

    operations: list[tuple[re.Pattern[str], Operation]]
    registry: Registry[Any]

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for pattern, operation in self.operations:
            match = pattern.fullmatch(path)
            if match and operation.method == method:
                return operation, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    def problems(self, schema: Any, value: Any) -> list[str]:
        validator = Draft7Validator(schema, registry=self.registry)
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
            for error in validator.iter_errors(value)
        ]


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"({\w+})", template)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(regex)


def _pointer(*parts: str) -> str:
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return f"{GITHUB_SPEC_URI}#/" + "/".join(quote(part, safe="~") for part in escaped)


def _follow(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _follow(spec, node["$ref"])
    return node


@cache
def github_description(used: tuple[tuple[str, str], ...]) -> ApiDescription:
    """GitHub's operations ``used`` ((method, path template) pairs)."""
    spec = _json_schema(json.loads(github_spec_path().read_text(encoding="utf-8")))
    registry: Registry[Any] = Registry().with_resource(
        GITHUB_SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT7)
    )
    operations = []
    for method, template in used:
        item = spec["paths"][template][method.lower()]
        parameters = {}
        for parameter in item.get("parameters", []):
            parameter = _deref(spec, parameter)
            if parameter["in"] == "path":
                parameters[parameter["name"]] = parameter["schema"]
        body = None
        if "requestBody" in item:
            where = ("paths", template, method.lower(), "requestBody", "content")
            body = {"$ref": _pointer(*where, "application/json", "schema")}
        code = next(c for c in item["responses"] if c.startswith("2"))
        content = _deref(spec, item["responses"][code]).get("content", {})
        examples = content.get("application/json", {}).get("examples", {})
        answer = _deref(spec, next(iter(examples.values()), {})).get("value") if examples else None
        operations.append(
            (
                _pattern(template),
                Operation(
                    method, template, item["operationId"], parameters, body, int(code), answer
                ),
            )
        )
    return ApiDescription(operations, registry)


# https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit: the
# documented attributes of the body (id and sha are in the path), and the answer
# shown there.
GITLAB_STATUS_BODY = {
    "type": "object",
    "required": ["state"],
    "additionalProperties": False,
    "properties": {
        "state": {
            "type": "string",
            "enum": ["pending", "running", "success", "failed", "canceled", "skipped"],
        },
        "ref": {"type": "string"},
        "name": {"type": "string"},
        "context": {"type": "string"},
        "target_url": {"type": "string"},
        "description": {"type": "string"},
        "coverage": {"type": "number"},
        "pipeline_id": {"type": "integer"},
    },
}
GITLAB_STATUS_ANSWER = {
    "id": 93,
    "sha": "",
    "ref": "develop",
    "status": "success",
    "name": "default",
    "target_url": None,
    "description": None,
    "created_at": "2016-01-19T09:05:50.355Z",
    "started_at": None,
    "finished_at": "2016-01-19T09:05:50.365Z",
    "allow_failure": False,
    "coverage": None,
    "author": {"id": 1, "username": "root", "name": "Administrator", "state": "active"},
}


def gitlab_description() -> ApiDescription:
    template = "/projects/{id}/statuses/{sha}"
    operation = Operation(
        "POST",
        template,
        "gitlab/post-commit-status",
        {"id": {"type": "string"}, "sha": {"type": "string", "pattern": "^[0-9a-f]{40}$"}},
        GITLAB_STATUS_BODY,
        201,
        GITLAB_STATUS_ANSWER,
    )
    return ApiDescription([(_pattern(template), operation)], Registry())


@dataclass
class ApiReceiver:
    """What the receiver saw: every request, each with the problems found in it."""

    url: str = ""
    token: str = ""
    # A status code every request gets instead (a 5xx), when set.
    fail_with: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{r['method']} {r['path']}: {p}" for r in self.requests for p in r["problems"]]

    def bodies(self, operation_id: str) -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests if r["operation"] == operation_id]


@contextmanager
def running_api(
    description: ApiDescription,
    token: str,
    authorized: Callable[[dict[str, str], str], bool],
    unauthorized: dict[str, Any],
    prefix: str = "",
) -> Iterator[ApiReceiver]:
    """An HTTP server on 127.0.0.1 answering ``description``'s operations under ``prefix``."""
    receiver = ApiReceiver(token=token)
    ids = iter(range(1000, 10**6))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path = urlsplit(self.path).path
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen: dict[str, Any] = {"method": self.command, "path": path, "problems": []}
            seen["headers"] = headers
            try:
                seen["json"] = json.loads(raw or b"null")
            except ValueError:
                seen["json"] = None
                seen["problems"].append("the body is not JSON")
            with lock:
                receiver.requests.append(seen)
            found = (
                description.find(self.command, path.removeprefix(prefix))
                if path.startswith(prefix)
                else None
            )
            if found is None:
                seen["operation"] = None
                seen["problems"].append("no such operation in the API description")
                self._answer(404, {"message": "Not Found"})
                return
            operation, values = found
            seen["operation"] = operation.operation_id
            for name, schema in operation.parameters.items():
                seen["problems"] += [
                    f"path parameter {name}: {p}"
                    for p in description.problems(schema, _typed(schema, values[name]))
                ]
            if operation.body is not None:
                if not headers.get("content-type", "").startswith("application/json"):
                    seen["problems"].append(f"content-type {headers.get('content-type')!r}")
                seen["problems"] += description.problems(operation.body, seen["json"])
            if not authorized(headers, receiver.token):
                self._answer(401, unauthorized)
                return
            if receiver.fail_with is not None:
                self._answer(receiver.fail_with, {"message": "Server Error"})
                return
            answer = copy.deepcopy(operation.answer) or {}
            if isinstance(answer, dict):
                answer["id"] = next(ids)
            self._answer(operation.status, answer)

        do_POST = _handle
        do_PATCH = _handle
        do_GET = _handle

    with serving(Handler) as base:
        receiver.url = f"{base}{prefix}"
        yield receiver


def _typed(schema: dict[str, Any], value: str) -> Any:
    """A path segment as the parameter's declared type (check_run_id: integer)."""
    if schema.get("type") == "integer":
        return int(value) if value.isdigit() else value
    return value


GITHUB_OPERATIONS = (
    ("POST", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("POST", "/repos/{owner}/{repo}/check-runs"),
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
)


def github_authorized(headers: dict[str, str], token: str) -> bool:
    # https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api
    return headers.get("authorization", "") in (f"token {token}", f"Bearer {token}")


def gitlab_authorized(headers: dict[str, str], token: str) -> bool:
    return headers.get("private-token") == token


@contextmanager
def github_api(token: str, prefix: str = "/api/v3") -> Iterator[ApiReceiver]:
    """GitHub's REST API as GitHub Enterprise Server serves it (under /api/v3)."""
    description = github_description(GITHUB_OPERATIONS)
    with running_api(
        description, token, github_authorized, GITHUB_BAD_CREDENTIALS, prefix
    ) as receiver:
        yield receiver


@contextmanager
def gitlab_api(token: str, prefix: str = "/api/v4") -> Iterator[ApiReceiver]:
    with running_api(
        gitlab_description(), token, gitlab_authorized, GITLAB_UNAUTHORIZED, prefix
    ) as receiver:
        yield receiver
