"""The interface every git host plugin implements, and the types it shares.

Like pre-commit's ``lang_base.py``
(https://github.com/pre-commit/pre-commit/blob/main/pre_commit/lang_base.py):
only the protocol lives here; ``all_git_hosts`` is the registry and each host
is a small module that imports this one and the core, never another host nor
the registry.

A status is what GitHub calls a commit status
(https://docs.github.com/en/rest/commits/statuses) and GitLab an external
commit status (https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit):
one per ``context`` and commit, the last one posted wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

# GitHub refuses a longer description (422 "description is too long (maximum
# is 140 characters)"); GitLab takes 255. The shorter bound for both.
MAX_DESCRIPTION = 140


class StatusState(enum.StrEnum):
    """GitHub's four commit states; each plugin maps them to its host's words."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"

    @property
    def final(self) -> bool:
        return self is not StatusState.PENDING


@dataclass(frozen=True)
class CommitStatus:
    context: str
    state: StatusState
    description: str
    target_url: str | None = None

    def short_description(self) -> str:
        text = " ".join(self.description.split())
        if len(text) <= MAX_DESCRIPTION:
            return text
        return text[: MAX_DESCRIPTION - 3] + "..."


class GitHostError(Exception):
    """A status was not posted. The message names the host and the HTTP status,
    never the token."""

    def __init__(self, message: str, host: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.status_code = status_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.host, self.status_code))


class GitHost(Protocol):
    """Where the statuses of one repository go."""

    @property
    def name(self) -> str:
        """The provider's name in cicd.yaml (``github``, ``gitlab``)."""
        ...

    @property
    def host(self) -> str:
        """The API's host (and port), for messages."""
        ...

    def post(self, commit: str, status: CommitStatus) -> None:
        """Set ``status`` on ``commit``; raises :class:`GitHostError`."""
        ...

    def close(self) -> None:
        """Release the HTTP client."""
        ...
