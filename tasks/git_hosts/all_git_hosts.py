"""The registry of git hosts: ``statuses.provider`` -> plugin.

Like pre-commit's ``all_languages.py``
(https://github.com/pre-commit/pre-commit/blob/main/pre_commit/all_languages.py):
the one module that knows every host. A new host is a module implementing
:class:`~tasks.git_hosts.base.GitHost` plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from cicd.config import StatusesConfig
from cicd.errors import BadInput
from tasks.git_hosts.addresses import default_api_url, parse_remote
from tasks.git_hosts.base import GitHost

# Each plugin is imported when a run uses it: githubkit and its models take
# seconds to import, and every pipeline module imports this registry.


def _github(config: StatusesConfig, api_url: str, repository: str, token: str) -> GitHost:
    from tasks.git_hosts.github import GitHubHost

    return GitHubHost(api_url, repository, token, check_runs=config.check_runs)


def _gitlab(config: StatusesConfig, api_url: str, repository: str, token: str) -> GitHost:
    from tasks.git_hosts.gitlab import GitLabHost

    return GitLabHost(api_url, repository, token)


HOSTS: dict[str, Callable[[StatusesConfig, str, str, str], GitHost]] = {
    "github": _github,
    "gitlab": _gitlab,
}


def target(config: StatusesConfig, address: str) -> tuple[str, str]:
    """The API URL and repository the statuses go to: as configured, else from
    the address the repository was cloned from."""
    remote = parse_remote(address)
    repository = config.repository or (remote.path if remote else None)
    if repository is None:
        raise BadInput(
            "field 'statuses.repository': cannot be derived from the repository address "
            "(a local path); set it to 'owner/name' or the GitLab project id"
        )
    if config.provider == "github" and repository.count("/") != 1:
        raise BadInput(
            f"field 'statuses.repository': GitHub expects 'owner/name', got {repository!r}"
        )
    if config.api_url is not None:
        return config.api_url, repository
    if remote is None:
        raise BadInput(
            "field 'statuses.api_url': cannot be derived from a local repository address; "
            "set it (e.g. https://api.github.com)"
        )
    return default_api_url(config.provider, remote.host), repository


def git_host(config: StatusesConfig, address: str, token: str) -> GitHost:
    """The plugin for ``config.provider``, pointed at the repository's API."""
    api_url, repository = target(config, address)
    return HOSTS[config.provider](config, api_url, repository, token)
