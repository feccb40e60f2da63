"""Commit statuses back to the git host, as plugins like the services.

base.py          the GitHost Protocol, CommitStatus, StatusState, GitHostError
all_git_hosts.py the registry: provider name -> plugin
github.py        commit statuses, or check runs with a GitHub App token (githubkit)
gitlab.py        commit statuses (POST /projects/:id/statuses/:sha)
addresses.py     owner/name and API URL from a repository's https or ssh address
"""
