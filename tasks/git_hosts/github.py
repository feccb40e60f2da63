"""GitHub: commit statuses, or check runs when the token is a GitHub App's.

Through githubkit (https://github.com/yanyongyu/githubkit), which types every
request body after GitHub's OpenAPI description and checks it before sending.

- Commit statuses: ``POST /repos/{owner}/{repo}/statuses/{sha}``
  (https://docs.github.com/en/rest/commits/statuses#create-a-commit-status).
- Check runs: ``POST /repos/{owner}/{repo}/check-runs`` when a context is first
  seen, ``PATCH .../check-runs/{id}`` after
  (https://docs.github.com/en/rest/checks/runs); only a GitHub App's
  installation token may create them.
"""

from __future__ import annotations

import threading
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from githubkit import GitHub
from githubkit.exception import GitHubException, RequestFailed
from githubkit.utils import UNSET

from tasks.git_hosts.base import CommitStatus, GitHostError, StatusState

TIMEOUT_SECONDS: Final = 10.0
# Check runs: a pending status is a run in progress, a final one completes it.
CONCLUSIONS: Final = {
    StatusState.SUCCESS: "success",
    StatusState.FAILURE: "failure",
    # A check run has no "error"; GitHub's own Actions report a runner
    # failure as a failure too.
    StatusState.ERROR: "failure",
}


class GitHubHost:
    name = "github"

    def __init__(
        self, api_url: str, repository: str, token: str, *, check_runs: bool = False
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.owner, self.repo = repository.split("/", 1)
        self.check_runs = check_runs
        parts = urlsplit(self.api_url)
        self.host = parts.netloc or self.api_url
        # No retries of our own making (a rate-limited status is not worth
        # holding the pipeline), no HTTP cache on disk.
        self._client = GitHub(
            token,
            base_url=self.api_url,
            timeout=TIMEOUT_SECONDS,
            auto_retry=False,
            http_cache=False,
            user_agent="cicd-flows",
        )
        self._check_run_ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def post(self, commit: str, status: CommitStatus) -> None:
        try:
            if self.check_runs:
                self._post_check_run(commit, status)
            else:
                self._post_status(commit, status)
        except RequestFailed as exc:
            code = exc.response.status_code
            raise GitHostError(
                f"GitHub at {self.host} answered HTTP {code} to {status.context} "
                f"({status.state.value}): {_message(exc.response)}",
                self.host,
                code,
            ) from None
        except (GitHubException, httpx.HTTPError) as exc:
            raise GitHostError(
                f"GitHub at {self.host} could not be reached for {status.context} "
                f"({status.state.value}): {type(exc).__name__}: {exc}",
                self.host,
            ) from None

    def _post_status(self, commit: str, status: CommitStatus) -> None:
        self._client.rest.repos.create_commit_status(
            self.owner,
            self.repo,
            commit,
            state=status.state.value,
            context=status.context,
            description=status.short_description(),
            target_url=status.target_url or UNSET,
        )

    def _post_check_run(self, commit: str, status: CommitStatus) -> None:
        output = {"title": status.short_description(), "summary": status.description}
        data: dict[str, Any] = {"name": status.context, "output": output}
        if status.target_url:
            data["details_url"] = status.target_url
        if status.state.final:
            data |= {"status": "completed", "conclusion": CONCLUSIONS[status.state]}
        else:
            data["status"] = "in_progress"
        with self._lock:
            known = self._check_run_ids.get(status.context)
        # The body's type is one of two overloads chosen by `status`; githubkit
        # checks the dict against its models at run time (rest_api_validate_body).
        if known is not None:
            self._client.rest.checks.update(self.owner, self.repo, known, data=data)  # type: ignore[call-overload]
            return
        body = {**data, "head_sha": commit}
        created = self._client.rest.checks.create(self.owner, self.repo, data=body)  # type: ignore[call-overload]
        with self._lock:
            self._check_run_ids[status.context] = created.parsed_data.id

    def close(self) -> None:
        # githubkit opens its sync client per request outside a `with GitHub()`
        # block; nothing stays open.
        return None


def _message(response: Any) -> str:
    """GitHub's own ``message`` (``Bad credentials``), else the body's start."""
    try:
        body = response.json()
    except Exception:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return str(getattr(response, "text", ""))[:200].strip() or "(no body)"
