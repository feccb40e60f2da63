"""The one git runner (``cicd.git`` calls it for every git command): the same
safe options and environment for every call, the whole stdout kept, the
process group registered with the command runner so a cancelled run reaps a
hanging fetch and its ssh child.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cicd import command

__all__ = ["ALLOWED_PROTOCOLS", "GIT_TIMEOUT", "GitResult", "run_git"]

GIT_TIMEOUT = 300.0
# Honoured by git itself, whatever the user's, the repository's or a remote's
# configuration says (https://git-scm.com/docs/git#Documentation/git.txt-GITALLOWPROTOCOL,
# https://git-scm.com/docs/git-config#Documentation/git-config.txt-protocolallow):
# ``ext::`` (runs a command) and ``fd::`` are refused by git even if a check here were missed.
ALLOWED_PROTOCOLS = "file:https:ssh"
# Options for every call. Hooks would run code from a directory we do not own
# (https://git-scm.com/docs/githooks, core.hooksPath); an fsmonitor set in a
# workspace's .git/config by test code would run on the next index refresh
# (https://git-scm.com/docs/git-config#Documentation/git-config.txt-corefsmonitor).
_SAFE_OPTIONS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# What survives of the caller's GIT_* variables (as pre-commit's no_git_env):
# GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS... would point
# git at another repository or inject configuration (https://git-scm.com/docs/git#_environment_variables).
_KEPT_GIT_VARIABLES = frozenset(
    {"GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY", "GIT_ASKPASS",
     "GIT_HTTP_PROXY_AUTHMETHOD", "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL"}
)  # fmt: skip


@dataclass(frozen=True)
class GitResult:
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def output(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def tail(self, lines: int = 5) -> str:
        text = self.stderr.strip() or self.output.strip()
        if self.timed_out:
            text += "\n(timed out)"
        return "\n".join(text.splitlines()[-lines:])


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT_GIT_VARIABLES
    }
    # A worker has nobody to type a password: fail instead of waiting forever.
    env["GIT_TERMINAL_PROMPT"] = "0"
    # The machine's /etc/gitconfig is not ours (hooks, helpers, url rewrites).
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_ALLOW_PROTOCOL"] = ALLOWED_PROTOCOLS
    # git's own messages stay English: some are parsed ("No names found").
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    env.update(extra or {})
    return env


def run_git(
    *args: str | Path, timeout: float = GIT_TIMEOUT, env: Mapping[str, str] | None = None
) -> GitResult:
    """The one runner: safe options and environment, whole stdout kept.

    Not ``command.run``: it keeps only the tail of the output and merges
    stderr into it, and listings (ls-files, ls-remote, log) must be read
    whole. Its process-group register and kill path are used, so a cancelled
    run still reaps a hanging fetch and its ssh child.
    """
    argv = ["git", *_SAFE_OPTIONS, *map(str, args)]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(env),
        start_new_session=True,
    )
    command.register_group(proc.pid)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            command.terminate_group(proc.pid, grace=1.0)
            out, err = proc.communicate()
    except BaseException:
        command.terminate_group(proc.pid, grace=1.0)
        raise
    finally:
        command.unregister_group(proc.pid)
    return GitResult(tuple(argv[1:]), proc.returncode, out, err.decode(errors="replace"), timed_out)
