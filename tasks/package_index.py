"""What a package index holds for a project: its simple page (PEP 503 HTML or
PEP 691 JSON, chosen by content negotiation) read into file names, URLs and
sha256 digests, so that a release can tell what is already published
(``tasks/publishing.py``).
"""

from __future__ import annotations

import hashlib
import html.parser
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import httpx
from packaging.utils import canonicalize_name

from cicd.errors import CicdError, InfrastructureError

__all__ = [
    "HTTP_TIMEOUT",
    "IndexFile",
    "IndexUnavailable",
    "PublishError",
    "index_url_for",
    "list_index_files",
    "parse_simple_html",
    "parse_simple_json",
    "remote_sha256",
    "simple_project_url",
]

HTTP_TIMEOUT = 60.0

# PEP 691 content negotiation: JSON when the index speaks it, else PEP 503 HTML.
_SIMPLE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
# Hash names twine or an index may put in a URL fragment; only sha256 is trusted here.
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class PublishError(CicdError):
    """The index refused an upload or a query (credentials, a rejected file)."""


class IndexUnavailable(InfrastructureError):
    """The index could not be reached or answered 5xx: worth a retry (publishing is idempotent)."""


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None


def simple_project_url(index_url: str, project: str) -> str:
    """``index_url/simple/<normalised name>/``; ``index_url/<name>/`` if it is a simple root."""
    base = index_url if index_url.endswith("/") else index_url + "/"
    if not base.rstrip("/").endswith("/simple"):
        base += "simple/"
    return f"{base}{canonicalize_name(project)}/"


def index_url_for(repository_url: str) -> str:
    """The simple index that shows what ``repository_url`` received.

    PyPI and TestPyPI upload to ``/legacy/`` and serve ``/simple/``; pypiserver
    and most private indexes serve both from the same root.
    """
    parts = urlsplit(repository_url)
    if parts.path.rstrip("/").endswith("/legacy"):
        host = parts.netloc.removeprefix("upload.")
        return f"{parts.scheme}://{host}/simple/"
    return repository_url


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def parse_simple_html(text: str, page_url: str) -> list[IndexFile]:
    """Files on a PEP 503 page; the sha256 comes from the ``#sha256=`` fragment if any."""
    parser = _LinkParser()
    parser.feed(text)
    files: list[IndexFile] = []
    for href, label in parser.links:
        url, fragment = urldefrag(urljoin(page_url, href))
        filename = label or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        algo, _, value = fragment.partition("=")
        sha = value.lower() if algo == "sha256" and _SHA256_HEX.match(value.lower()) else None
        files.append(IndexFile(filename=filename, url=url, sha256=sha))
    return files


def parse_simple_json(data: Mapping[str, Any], page_url: str) -> list[IndexFile]:
    """Files in a PEP 691 JSON response."""
    files: list[IndexFile] = []
    for entry in data.get("files", []):
        hashes = entry.get("hashes") or {}
        sha = str(hashes["sha256"]).lower() if "sha256" in hashes else None
        url, _ = urldefrag(urljoin(page_url, str(entry["url"])))
        files.append(IndexFile(filename=str(entry["filename"]), url=url, sha256=sha))
    return files


def list_index_files(client: httpx.Client, index_url: str, project: str) -> dict[str, IndexFile]:
    """What the index already holds for ``project``, by file name (empty if unknown)."""
    url = simple_project_url(index_url, project)
    try:
        response = client.get(url, headers={"Accept": _SIMPLE_ACCEPT})
    except httpx.HTTPError as exc:
        raise IndexUnavailable(f"cannot query the index at {url}: {exc}") from exc
    if response.status_code == 404:
        return {}
    _raise_for_index_status(response, url)
    page = str(response.url)
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "application/vnd.pypi.simple.v1+json":
        try:
            files = parse_simple_json(response.json(), page)
        except (ValueError, KeyError, TypeError) as exc:
            raise PublishError(
                f"the index at {url} sent an invalid PEP 691 response: {exc}"
            ) from None
    else:
        files = parse_simple_html(response.text, page)
    return {f.filename: f for f in files}


def _raise_for_index_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status in (401, 403):
        raise PublishError(
            f"the index at {url} refused the query ({status}): check the credentials"
        )
    if status >= 500:
        raise IndexUnavailable(f"the index at {url} answered {status}")
    if status >= 400:
        raise PublishError(f"the index at {url} answered {status}")


def remote_sha256(client: httpx.Client, entry: IndexFile) -> str:
    """The sha256 of a file on the index, downloading it when the index shows no hash."""
    if entry.sha256 is not None:
        return entry.sha256
    digest = hashlib.sha256()
    try:
        with client.stream("GET", entry.url) as response:
            _raise_for_index_status(response, entry.url)
            for block in response.iter_bytes():
                digest.update(block)
    except httpx.HTTPError as exc:
        raise IndexUnavailable(f"cannot download {entry.url} to hash it: {exc}") from exc
    return digest.hexdigest()
