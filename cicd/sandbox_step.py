"""The box of one job step, derived from what the step is given: its argv, cwd and env.

Everything a step is given can come from the repository under test (``tests.*.env``
and ``tests.*.args`` are cicd.yaml fields), so nothing here is taken on trust:

- writable: the workspace (the step's ``cwd``) and, when an argument names a file
  in a run's reports directory (``--junitxml=$CICD_HOME/runs/<run>/reports/...``),
  that reports directory; nothing else under ``$CICD_HOME``.
- read-only: ``VIRTUAL_ENV``, ``PYTHONPATH`` and ``PRE_COMMIT_HOME`` entries only when they lie in
  ``$CICD_HOME/envs`` or beside the workspace (the per-run ``install_project``
  site), and the interpreter the environment was made from (found through the
  environment's own ``bin/python`` link, which the repository does not write).
- ports: a loopback port named in the step's env (``bolt://127.0.0.1:7687``,
  ``http://127.0.0.1:8123/v1``) is bridged only when this process or one of its
  children listens on it (this run's services and LLM gateway, found through
  ``/proc/net/tcp`` and ``/proc/PID/fd``, proc(5)), never the Prefect API's
  port, and at most :data:`MAX_PORTS` of them, so a cicd.yaml that lists every
  port cannot scan the host through the bridge.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from cicd import paths
from cicd.sandbox import Sandbox, confined, mode

MAX_PORTS = 8
LOOPBACK_PORT = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})\b")
TCP_LISTEN = "0A"


def _path_candidates(argv: Sequence[str]) -> Iterator[Path]:
    for arg in argv:
        for part in re.split(r"[=:]", arg):
            if part.startswith("/"):
                yield Path(part)


def reports_dirs(argv: Sequence[str]) -> list[Path]:
    """The run reports directories (``runs/<run>/reports``) the arguments name files in."""
    runs = paths.runs().resolve()
    found: list[Path] = []
    for candidate in _path_candidates(argv):
        resolved = Path(os.path.abspath(candidate))
        for parent in (resolved, *resolved.parents):
            if parent.name == "reports" and parent.parent.parent == runs and parent.is_dir():
                resolved_parent = parent.resolve()
                if resolved_parent.parent.parent == runs and resolved_parent not in found:
                    found.append(resolved_parent)
                break
    return found


def _own_tree(path: Path, workspace: Path) -> Path | None:
    """The directory of ours that ``path`` lies in: an environment or this run's site."""
    environments = paths.environments().resolve()
    if environments in path.parents:
        return environments / path.relative_to(environments).parts[0]
    siblings = workspace.parent
    if siblings in path.parents:
        top = siblings / path.relative_to(siblings).parts[0]
        # tasks.environments.project_site: "<workspace>.site-py<version>", this run's only.
        if top.name.startswith(f"{workspace.name}.site-"):
            return top
    return None


def environment_paths(workspace: Path, env: Mapping[str, str]) -> list[Path]:
    """The environment, its interpreter and the run's install site, when they are ours."""
    found: list[Path] = []
    candidates = [env.get("VIRTUAL_ENV", ""), *env.get("PYTHONPATH", "").split(os.pathsep)]
    # pre-commit's hook environments (tasks.quality), read-only: its store then
    # runs without writing (Store.readonly in
    # https://github.com/pre-commit/pre-commit/blob/main/pre_commit/store.py).
    candidates.append(env.get("PRE_COMMIT_HOME", ""))
    for value in candidates:
        if not value.startswith("/"):
            continue
        path = Path(value).resolve()
        tree = _own_tree(path, workspace) if path.exists() else None
        if tree is not None:
            found.append(tree)
    venv = env.get("VIRTUAL_ENV", "")
    tree = _own_tree(Path(venv).resolve(), workspace) if venv.startswith("/") else None
    python = tree / "bin" / "python" if tree is not None else None
    if python is not None and python.exists():
        # The interpreter the environment was made from: its bin/python link, ours.
        found.append(python.resolve().parent.parent)
    return list(dict.fromkeys(found))


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows, None)
            for row in rows:
                fields = row.split()
                listening = len(fields) > 9 and fields[3] == TCP_LISTEN
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _own_processes() -> set[int]:
    """This process and all its descendants, from the parent links in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces and parentheses: split after the last ')'.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    own, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid not in own:
            own.add(pid)
            todo.extend(children.get(pid, ()))
    return own


def served_by_us(port: int, own: set[int] | None = None) -> bool:
    """Whether this process or one of its descendants listens on ``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    for pid in own if own is not None else _own_processes():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return True
    return False


def prefect_api_ports() -> set[int]:
    """The Prefect API's port, from the worker's environment and Prefect's settings."""
    urls = [os.environ.get("PREFECT_API_URL", "")]
    # Only a worker that imported Prefect talks to an API (importing it costs seconds).
    if "prefect" in sys.modules:
        with contextlib.suppress(Exception):
            from prefect.settings import get_current_settings

            urls.append(str(get_current_settings().api.url or ""))
    ports = set()
    for url in urls:
        with contextlib.suppress(ValueError):
            port = urllib.parse.urlsplit(url).port
            if port:
                ports.add(port)
    return ports


def service_ports(env: Mapping[str, str]) -> list[int]:
    named: list[int] = []
    for value in env.values():
        for match in LOOPBACK_PORT.finditer(value):
            port = int(match.group(1))
            if 0 < port < 65536 and port not in named:
                named.append(port)
    control_plane = prefect_api_ports()
    named = [p for p in named if p not in control_plane][:MAX_PORTS]
    if not named:
        return []
    own = _own_processes()
    return [port for port in named if served_by_us(port, own)]


def step_sandbox(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Sandbox:
    workspace = cwd.resolve()
    return Sandbox(
        workspace,
        read_only=environment_paths(workspace, env),
        writable=reports_dirs(argv),
        allow_ports=service_ports(env),
    )


@contextlib.contextmanager
def confine_step(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The step's command and environment, confined as ``CICD_SANDBOX`` says."""
    if mode() == "off":
        # Not even the derivation: it scans /proc for the services' sockets.
        yield list(argv), dict(env)
        return
    with confined(step_sandbox(argv, cwd, env), argv, env) as (run_argv, run_env):
        yield run_argv, run_env
