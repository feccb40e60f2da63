"""The reverse proxy in front of an environment: a real nginx, configured and
reloaded by the pipeline.

nginx runs as a master in the foreground with its own prefix under the
environment's state directory (``nginx -p DIR -c nginx.conf -g 'daemon off;'``,
https://nginx.org/en/docs/switches.html) in a session of its own, so it outlives
the pipeline run that started it. Routing is one ``upstream`` block: weighted
servers for a canary (``server 127.0.0.1:P weight=W``,
https://nginx.org/en/docs/http/ngx_http_upstream_module.html#server), a new set
for blue-green.

A switch is atomic for clients: the new file replaces the old by rename, the
master re-reads it on SIGHUP and starts new workers while the old ones finish
the requests they hold (https://nginx.org/en/docs/control.html). The switch is
complete when every worker of the previous configuration has exited: only then
may the replicas it sent traffic to be stopped. A generation number answered at
``/__cicd/generation`` tells which configuration a worker runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from math import gcd
from pathlib import Path

from cicd import command
from cicd.errors import InfrastructureError
from tasks.services.host import is_alive, process_start_time

GENERATION_PATH = "/__cicd/generation"
START_TIMEOUT = 10.0
SWITCH_TIMEOUT = 30.0
# Old workers get this long to finish their requests after a reload.
WORKER_SHUTDOWN_SECONDS = 10


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None
    )
    if found is None:
        raise InfrastructureError(
            "nginx is not installed (Debian: apt-get install nginx-light; scripts/bootstrap does)"
        )
    return found


def weights_for(stable: list[int], canary: list[int], percent: int) -> list[tuple[int, int]]:
    """Per-server weights giving the canary set ``percent`` % of the requests.

    With ``c`` canary and ``s`` stable servers, canary servers weigh
    ``percent * s`` and stable ones ``(100 - percent) * c``, reduced by their gcd.
    """
    if percent >= 100 or not stable:
        return [(p, 1) for p in canary]
    if percent <= 0 or not canary:
        return [(p, 1) for p in stable]
    w_canary, w_stable = percent * len(stable), (100 - percent) * len(canary)
    g = gcd(w_canary, w_stable)
    return [(p, w_stable // g) for p in stable] + [(p, w_canary // g) for p in canary]


def render(listen: int, servers: list[tuple[int, int]], generation: int, prefix: Path) -> str:
    if servers:
        upstream = "\n".join(f"        server 127.0.0.1:{p} weight={w};" for p, w in servers)
    else:  # nothing deployed yet: every request is a 503, never another program
        upstream = "        server 127.0.0.1:9 down;"
    tmp = prefix / "tmp"
    return f"""# written by cicd-flows (tasks/deploy/proxy.py); generation {generation}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
worker_shutdown_timeout {WORKER_SHUTDOWN_SECONDS}s;
events {{ worker_connections 1024; }}
http {{
    log_format routed '$msec $status $upstream_addr $request_uri';
    access_log {prefix / "logs" / "access.log"} routed;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
{upstream}
    }}
    server {{
        listen 127.0.0.1:{listen};
        location = {GENERATION_PATH} {{ return 200 "{generation}\\n"; }}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(name))
    return found


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Proxy:
    """The nginx of one environment: its directory, port, master pid."""

    prefix: Path
    port: int
    pid: int | None = None
    start_time: int | None = None
    generation: int = 0

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.pid is not None and is_alive(self.pid, self.start_time)

    def _write(self, servers: list[tuple[int, int]]) -> None:
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        text = render(self.port, servers, self.generation, self.prefix)
        staged = self.prefix / "nginx.next.conf"
        _atomic_write(staged, text)
        checked = command.run(
            [nginx_binary(), "-t", "-q", "-p", str(self.prefix), "-c", str(staged)], timeout=30
        )
        if not checked.ok:
            raise InfrastructureError(f"nginx refused the configuration: {checked.tail(10)}")
        _atomic_write(self.conf, text)

    def ensure_started(self, servers: list[tuple[int, int]]) -> None:
        """Start the master on ``servers`` when it does not run (first deploy, reboot)."""
        if self.running():
            return
        self.generation += 1
        self._write(servers)
        proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=(self.prefix / "logs" / "master.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid, self.start_time = proc.pid, process_start_time(proc.pid)
        self._wait_generation(START_TIMEOUT)

    def switch(self, servers: list[tuple[int, int]]) -> float:
        """Route to ``servers``; returns once no worker of the old routing is left.

        Returns the seconds the switch took.
        """
        if not self.running() or self.pid is None:
            raise InfrastructureError("the proxy is not running")
        started = time.monotonic()
        old_workers = _children(self.pid)
        self.generation += 1
        self._write(servers)
        os.kill(self.pid, signal.SIGHUP)
        self._wait_generation(SWITCH_TIMEOUT)
        deadline = time.monotonic() + WORKER_SHUTDOWN_SECONDS + 5
        while _children(self.pid) & old_workers:
            if time.monotonic() > deadline:
                raise InfrastructureError("nginx's old workers did not exit after a reload")
            time.sleep(0.02)
        return time.monotonic() - started

    def _wait_generation(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = f"{self.generation}"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + GENERATION_PATH, timeout=1) as answer:
                    if answer.read().decode().strip() == want:
                        return
            except OSError:
                pass
            if not self.running():
                log = self.prefix / "logs" / "error.log"
                tail = log.read_text()[-2000:] if log.is_file() else ""
                raise InfrastructureError(f"nginx exited: {tail}")
            time.sleep(0.02)
        raise InfrastructureError(f"nginx did not load generation {want} within {timeout:g}s")

    def stop(self) -> None:
        if self.running() and self.pid is not None:
            command.terminate_group(self.pid, grace=5.0)
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
