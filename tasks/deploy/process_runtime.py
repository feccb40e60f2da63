"""The default runtime: each release in its own virtualenv, replicas as
processes, each the leader of its own process group.

The virtualenv is made by uv from the release's wheel, once per artifact
(``releases/<id>/venv``, a marker written last): staging and production run
the very same installed files. Replicas outlive the pipeline run that started
them (they are the deployed service), so they are not registered with
``cicd.command``'s reaper; they are stopped by process group, and a recorded
pid counts only while its /proc start time matches (no pid reuse).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cicd import command
from cicd.config_deploy import DeployEnvironment
from cicd.errors import InfrastructureError
from tasks.deploy.base import Release, Replica, fill
from tasks.services.host import is_alive, process_start_time

READY_MARKER = ".cicd-release-ready"
INSTALL_TIMEOUT = 600.0
STOP_GRACE_SECONDS = 5.0


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else "uv"


class ProcessRuntime:
    name = "process"

    def install(self, release: Release, releases_dir: Path) -> Path:
        home = releases_dir / release.id
        venv = home / "venv"
        if (home / READY_MARKER).is_file():
            return venv
        shutil.rmtree(home, ignore_errors=True)  # a half-made one is never trusted
        home.mkdir(parents=True)
        log = home / "install.log"
        uv = _uv()
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv / "bin" / "python"),
                release.wheel,
            ],
        ]
        for argv in steps:
            result = command.run(argv, timeout=INSTALL_TIMEOUT, log_path=log)
            if not result.ok:
                shutil.rmtree(home, ignore_errors=True)
                raise InfrastructureError(
                    f"installing release {release.id} failed: {result.tail(15)}"
                )
        (home / READY_MARKER).write_text(release.sha256 + "\n")
        return venv

    def start(
        self,
        release: Release,
        installed: Path,
        port: int,
        settings: DeployEnvironment,
        log_dir: Path,
    ) -> Replica:
        values = {
            "port": str(port),
            "venv": str(installed),
            "python": str(installed / "bin" / "python"),
            "release": release.id,
        }
        argv = fill(list(settings.start), values)
        # A bare program name is the release's own console script when it has one.
        if "/" not in argv[0] and (installed / "bin" / argv[0]).is_file():
            argv[0] = str(installed / "bin" / argv[0])
        env = {
            **os.environ,
            **settings.env,
            "CICD_RELEASE": release.id,
            "PORT": str(port),
            "VIRTUAL_ENV": str(installed),
            "PATH": f"{installed / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("PYTHONPATH", None)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{release.id}-{port}.log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=installed,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise InfrastructureError(f"cannot start {argv[0]!r}: {exc}") from None
        return Replica(release.id, port, proc.pid, process_start_time(proc.pid))

    def running(self, replica: Replica) -> bool:
        return is_alive(replica.pid, replica.start_time)

    def stop(self, replica: Replica) -> None:
        if self.running(replica):
            command.terminate_group(replica.pid, grace=STOP_GRACE_SECONDS)
        # Our own child: reap it so it does not linger as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(replica.pid, os.WNOHANG)
