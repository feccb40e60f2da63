"""Releases that are never ambiguous, against a real pypiserver (tests/pypiserver_fixture.py).

* The index goes away between two uploads: a real HTTP front on 127.0.0.1
  (``IndexFront``) forwards to the pypiserver and stops listening once it has
  passed a given number of uploads, so the failure falls between the wheel and
  the sdist every time. The report names what is on the index and what is not;
  a rerun uploads the rest and skips what is there.
* Two publishes of one version at once: serialised by the lock, the second
  reports "already published" and uploads nothing.
"""

from __future__ import annotations

import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cicd.results import JobState, PipelineReport
from tasks.packaging import ReleaseRefused
from tasks.publishing import PartialPublish, PublishReport, publish
from tasks.release_jobs import partial_result
from tasks.reports import render_summary
from tests.conftest import free_port
from tests.pypiserver_fixture import PypiServer, pypiserver  # noqa: F401 - fixture

PROJECT = "cicd-fault-probe"
METADATA = f"Metadata-Version: 2.1\nName: {PROJECT}\nVersion: {{version}}\nSummary: probe\n"


def distributions(out: Path, version: str = "1.0.0", marker: str = "") -> list[Path]:
    """A minimal wheel and sdist of ``PROJECT`` (what twine and pypiserver read)."""
    out.mkdir(parents=True, exist_ok=True)
    module = PROJECT.replace("-", "_")
    wheel = out / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{module}/__init__.py", f"VERSION = {version!r}  # {marker}\n")
        archive.writestr(f"{info}/METADATA", METADATA.format(version=version))
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    sdist = out / f"{module}-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name, text in {
            "PKG-INFO": METADATA.format(version=version),
            f"{module}/__init__.py": f"VERSION = {version!r}  # {marker}\n",
        }.items():
            data = text.encode()
            member = tarfile.TarInfo(f"{module}-{version}/{name}")
            member.size = len(data)
            member.mtime = 0
            archive.addfile(member, io.BytesIO(data))
    return [wheel, sdist]


class IndexFront:
    """A real HTTP server in front of the pypiserver that stops listening after
    ``uploads`` POSTs: the index going away between two uploads, deterministically."""

    def __init__(self, upstream: str, uploads: int | None, port: int | None = None) -> None:
        self.upstream = upstream
        self.left = uploads
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.forward(b"")

            def do_POST(self) -> None:
                with front.lock:
                    if front.left is not None and front.left <= 0:
                        # Gone: no answer, and no more connections accepted.
                        front.close_soon()
                        self.close_connection = True
                        return
                    if front.left is not None:
                        front.left -= 1
                self.forward(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(
                    self.command, front.upstream.rstrip("/") + self.path,
                    headers=headers, content=body, timeout=30,
                )  # fmt: skip
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Location"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.content)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close_soon(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def index_front(
    upstream: str, uploads: int | None, port: int | None = None
) -> Iterator[IndexFront]:
    front = IndexFront(upstream, uploads, port)
    try:
        yield front
    finally:
        front.stop()
        front.thread.join(10)


def publish_to(server: PypiServer, files: list[Path], repository_url: str) -> PublishReport:
    return publish(
        files,
        repository_url=repository_url,
        index_url=server.simple_url,
        username=server.username,
        password=server.password,
        dry_run=False,
    )


@pytest.mark.slow
def test_index_stopped_between_two_uploads_then_a_rerun_completes(
    pypiserver: PypiServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = distributions(tmp_path / "dist")
    with index_front(pypiserver.url, uploads=1) as front:
        port = front.server.server_address[1]
        with pytest.raises(PartialPublish) as caught:
            publish_to(pypiserver, files, front.url)
    report = caught.value.report
    first, second = (f.name for f in files)
    assert report.names("uploaded") == [first]
    assert report.names("missing") == [second]
    message = str(caught.value)
    assert f"on the index: {first}" in message and f"not on the index: {second}" in message
    assert sorted(pypiserver.stored()) == [first]
    # What --json and the run summary show of it (the publish job's result).
    job = partial_result("publish", caught.value)
    assert job.state is JobState.FAILED
    assert job.to_json()["details"]["uploaded"] == [first]
    assert job.to_json()["details"]["missing"] == [second]
    summary = render_summary(PipelineReport("release", "repo", "v1.0.0", "0" * 40, (job,)))
    assert f"`{first}`: on the index" in summary and f"`{second}`: NOT on the index" in summary

    # The index is back (same address): the rerun skips the wheel, uploads the sdist.
    with index_front(pypiserver.url, uploads=None, port=port) as front:
        rerun = publish_to(pypiserver, files, front.url)
    assert rerun.names("skipped") == [first]
    assert rerun.names("uploaded") == [second]
    assert sorted(pypiserver.stored()) == sorted(f.name for f in files)

    # A file of that name with other bytes is an error naming it; nothing is uploaded.
    changed = distributions(tmp_path / "changed", marker="rebuilt")
    with pytest.raises(ReleaseRefused, match=rf"{first} is already on .* sha256"):
        publish_to(pypiserver, changed, pypiserver.url)


@pytest.mark.slow
def test_two_publishes_of_one_version_at_once(
    pypiserver: PypiServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = distributions(tmp_path / "dist", version="2.0.0")
    reports: list[PublishReport] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            reports.append(publish_to(pypiserver, files, pypiserver.url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    uploaded = [r for r in reports if not r.already_published]
    already = [r for r in reports if r.already_published]
    assert len(uploaded) == 1 and len(already) == 1
    assert sorted(uploaded[0].names("uploaded")) == sorted(f.name for f in files)
    assert sorted(already[0].names("skipped")) == sorted(f.name for f in files)
    assert sorted(pypiserver.stored()) == sorted(f.name for f in files)
