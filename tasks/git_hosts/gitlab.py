"""GitLab: external commit statuses, ``POST /projects/:id/statuses/:sha``
(https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit).

Plain httpx: the endpoint is one request with four fields, and no client
library for GitLab is needed for it. The token goes in ``PRIVATE-TOKEN``
(https://docs.gitlab.com/api/rest/authentication/#personalprojectgroup-access-tokens).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlsplit

import httpx

from tasks.git_hosts.base import CommitStatus, GitHostError, StatusState

TIMEOUT_SECONDS: Final = 10.0
# GitLab's states: pending, running, success, failed, canceled, skipped. A job
# that started is "running"; GitLab has no "error", a failed one is "failed".
STATES: Final = {
    StatusState.PENDING: "running",
    StatusState.SUCCESS: "success",
    StatusState.FAILURE: "failed",
    StatusState.ERROR: "failed",
}


class GitLabHost:
    name = "gitlab"

    def __init__(self, api_url: str, repository: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        # A numeric id as it is, a path URL-encoded: group%2Fname
        # (https://docs.gitlab.com/api/rest/#namespaced-paths).
        self.project = repository if repository.isdigit() else quote(repository, safe="")
        self.host = urlsplit(self.api_url).netloc or self.api_url
        self._client = httpx.Client(
            headers={"PRIVATE-TOKEN": token, "User-Agent": "cicd-flows"},
            timeout=TIMEOUT_SECONDS,
        )

    def post(self, commit: str, status: CommitStatus) -> None:
        body: dict[str, str] = {
            "state": STATES[status.state],
            "name": status.context,
            "description": status.short_description(),
        }
        if status.target_url:
            body["target_url"] = status.target_url
        url = f"{self.api_url}/projects/{self.project}/statuses/{commit}"
        try:
            response = self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise GitHostError(
                f"GitLab at {self.host} could not be reached for {status.context} "
                f"({status.state.value}): {type(exc).__name__}: {exc}",
                self.host,
            ) from None
        if not 200 <= response.status_code < 300:
            raise GitHostError(
                f"GitLab at {self.host} answered HTTP {response.status_code} to "
                f"{status.context} ({status.state.value}): {_message(response)}",
                self.host,
                response.status_code,
            )

    def close(self) -> None:
        self._client.close()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])[:200]
    return response.text[:200].strip() or "(no body)"
