"""A real pypiserver on 127.0.0.1 for release tests, with upload authentication.

Uploads need a user and password from an htpasswd file (passlib writes it),
so a test can tell credentials that reached twine from credentials that did
not. Listing and downloading stay open, like PyPI. The fallback redirect to
pypi.org is disabled: an unknown project must be a 404 here, not a question
to the internet.
"""

from __future__ import annotations

import hashlib
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # passlib 1.7.4 (the last release) imports the deprecated crypt module.
    warnings.simplefilter("ignore", DeprecationWarning)
    from passlib.apache import HtpasswdFile  # type: ignore[import-untyped]

from tests.conftest import BIN, free_port, stop_process_group, wait_for_http

USERNAME = "releaser"
PASSWORD = "pw-8c1f3e-not-a-real-secret"


@dataclass(frozen=True)
class PypiServer:
    url: str
    packages: Path
    username: str
    password: str
    log: Path

    @property
    def simple_url(self) -> str:
        return f"{self.url}simple/"

    def stored(self) -> dict[str, str]:
        """File name -> sha256 of what the server holds on disk."""
        return {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.packages.iterdir())
            if path.is_file()
        }


@contextmanager
def running_pypiserver(root: Path, *, hash_algo: str = "sha256") -> Iterator[PypiServer]:
    """Start pypiserver serving ``root/packages``; stopped by its process group on exit."""
    packages = root / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    htpasswd = root / "htpasswd"
    users = HtpasswdFile(str(htpasswd), new=True)
    users.set_password(USERNAME, PASSWORD)
    users.save()
    port = free_port()
    log_path = root / "pypiserver.log"
    argv = [
        str(BIN / "pypi-server"), "run",
        "--host", "127.0.0.1", "--port", str(port),
        "--authenticate", "update", "--passwords", str(htpasswd),
        "--disable-fallback", "--hash-algo", hash_algo,
        str(packages),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            try:
                wait_for_http(f"{url}health", 30, proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')}") from exc
            yield PypiServer(url, packages, USERNAME, PASSWORD, log_path)
        finally:
            stop_process_group(proc)


@pytest.fixture
def pypiserver(tmp_path: Path) -> Iterator[PypiServer]:
    with running_pypiserver(tmp_path / "pypiserver") as server:
        yield server
