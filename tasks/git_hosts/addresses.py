"""A repository's owner/name and its host's API, from the address it was cloned from.

``https://github.com/owner/name.git``, ``ssh://git@host:22/group/sub/name.git``
and the scp-like ``git@host:owner/name.git``
(https://git-scm.com/docs/git-clone#_git_urls) all name the host and the
repository's path; a local path names neither, and then cicd.yaml must.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

GITHUB_COM = "github.com"
GITHUB_COM_API = "https://api.github.com"
# scp-like: [user@]host:path, no slash before the colon.
_SCP_LIKE = re.compile(r"(?:[^@/\s]+@)?(?P<host>[A-Za-z0-9_.-]+):(?P<path>[^/\s].*)")


@dataclass(frozen=True)
class RemoteAddress:
    host: str
    path: str  # owner/name, or group/subgroup/name on GitLab; no ".git"


def parse_remote(address: str) -> RemoteAddress | None:
    """The host and repository path of an https or ssh address; None for a local one."""
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in ("https", "http", "ssh") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    else:
        match = _SCP_LIKE.fullmatch(address)
        if match is None:
            return None
        host, path = match["host"], match["path"]
    path = path.strip("/").removesuffix(".git")
    if path.count("/") < 1:
        return None
    return RemoteAddress(host, path)


def default_api_url(provider: str, host: str) -> str:
    """github.com's API, GitHub Enterprise Server's ``/api/v3``
    (https://docs.github.com/en/enterprise-server@3.17/rest/quickstart), GitLab's ``/api/v4``."""
    if provider == "github":
        return GITHUB_COM_API if host == GITHUB_COM else f"https://{host}/api/v3"
    return f"https://{host}/api/v4"
