"""Headless Chromium driven through the DevTools protocol, for the UI tests.

Debian's ``chromium`` (``scripts/test`` installs it) and the ``websockets``
package Prefect already depends on: no Playwright download. The protocol:
https://chromedevtools.github.io/devtools-protocol/ (``Page.navigate``,
``Runtime.evaluate``, ``Page.captureScreenshot``). The browser runs in a
session of its own and is stopped by its process group.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import stop_process_group

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class Page:
    """One tab: navigate, read its text, take a screenshot."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._socket.recv(timeout=60))
            if reply.get("id") == message_id:  # events in between are not ours
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_for_text(
        self, found: Callable[[str], bool], seconds: float, scroll: bool = False
    ) -> str:
        """The page's text once ``found`` accepts it (the UI renders after its API calls)."""
        end = time.monotonic() + seconds
        text = ""
        while time.monotonic() < end:
            if scroll:
                self.scroll_to_end()
            text = self.text()
            if found(text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"page text never matched within {seconds}s:\n{text[-3000:]}")

    def scroll_to_end(self) -> None:
        """Scroll the window and every scrolling box to its end (the UI's log
        list renders the rows in view only)."""
        self.evaluate(
            "(() => { for (const e of document.querySelectorAll('*')) {"
            " if (e.scrollHeight > e.clientHeight + 4) e.scrollTop = e.scrollHeight; }"
            " window.scrollTo(0, document.body.scrollHeight); })()"
        )

    def choose(self, option: str) -> bool:
        """Pick ``option`` in the page's ``<select>`` that offers it, as a person
        would (the ``change`` event the UI listens to); False when none does."""
        script = (
            "(wanted => { for (const s of document.querySelectorAll('select')) {"
            " const i = [...s.options].findIndex(o => o.text.trim() === wanted);"
            " if (i >= 0) { s.selectedIndex = i;"
            " s.dispatchEvent(new Event('input', {bubbles: true}));"
            " s.dispatchEvent(new Event('change', {bubbles: true})); return true; } }"
            " return false; })(" + json.dumps(option) + ")"
        )
        return bool(self.evaluate(script))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


def _debugger_port(profile: Path, proc: subprocess.Popen[bytes], seconds: float) -> int:
    """Chromium writes the port it chose into ``DevToolsActivePort`` in its profile."""
    marker = profile / "DevToolsActivePort"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its debugging port")


@contextmanager
def chromium_page(width: int = 1440, height: int = 1000) -> Iterator[Page]:
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("chromium is not installed (scripts/test installs Debian's)")
    with tempfile.TemporaryDirectory(prefix="cicd-chromium-") as profile:
        log = open(Path(profile) / "chromium.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                # Root in a container has no user namespace for Chromium's own sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            port = _debugger_port(Path(profile), proc, 60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                targets = json.load(answer)
            page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            with connect(page_url, max_size=64 * 2**20, open_timeout=30) as socket:
                page = Page(socket)
                page.call("Page.enable")
                page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
        finally:
            stop_process_group(proc, grace=5)
            log.close()
