"""A command's output while it runs: followed from its output file line by line,
masked, bounded in the log file and in memory (``cicd/command.py`` runs the
command; this is what reads what it prints).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import IO

from cicd import masking

__all__ = ["MAX_LINE_BYTES", "MAX_LOG_BYTES", "OUTPUT_TAIL_CHARS", "OutputFollower", "log_footer"]

# Output kept in memory per command (the tail); the rest goes to the log file.
OUTPUT_TAIL_CHARS = 20_000
# A step's output kept in its log file: beyond this, only a notice and the tail,
# so that a job printing gigabytes cannot fill the disk of the worker either.
MAX_LOG_BYTES = 64 * 2**20
# The longest line handled as one: a longer one is cut into pieces of this size.
MAX_LINE_BYTES = 64 * 2**10
# How much output is read at a time, and how often a running command is looked at.
_READ_BYTES = 256 * 2**10
_FOLLOW_SECONDS = 0.05


def _masked_line(data: bytes) -> str:
    return masking.mask(data.decode("utf-8", errors="replace"))


class OutputFollower(threading.Thread):
    """Follows a command's output file while it runs, in bounded memory.

    The command writes to an unlinked temporary file (see :func:`run` for why
    not a pipe). This thread reads what was written with ``pread`` (which
    leaves the file offset the child writes at untouched), splits it into
    lines, masks them and hands them on: to the log file (at most
    :data:`MAX_LOG_BYTES` of a step, then a notice and the tail), to ``on_line``
    (live logs) and to a tail of :data:`OUTPUT_TAIL_CHARS` characters. A line
    longer than :data:`MAX_LINE_BYTES` is cut into pieces, so a step printing
    200 MB without a newline costs no more memory than one printing lines.
    """

    def __init__(
        self,
        fd: int,
        log: IO[str] | None,
        on_line: Callable[[str], None] | None,
    ) -> None:
        super().__init__(name="cicd-output", daemon=True)
        self._fd = fd
        self._log = log
        self._on_line = on_line
        self._offset = 0
        self._pending = bytearray()
        self._done = threading.Event()
        self._tail = ""
        self.lines = 0
        self.logged_bytes = 0
        self.omitted_bytes = 0
        self.error: BaseException | None = None

    def finish(self) -> None:
        """Read what is left (the command is gone) and stop."""
        self._done.set()
        self.join()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            while True:
                finished = self._done.is_set()  # read before the last pread
                data = os.pread(self._fd, _READ_BYTES, self._offset)
                if data:
                    self._offset += len(data)
                    self._feed(data)
                elif finished:
                    break
                else:
                    self._done.wait(_FOLLOW_SECONDS)
            if self._pending:
                self._block(bytes(self._pending), complete=False)
                self._pending.clear()
        except BaseException as exc:  # handed to the caller by finish()
            self.error = exc

    def _feed(self, data: bytes) -> None:
        self._pending += data
        end = self._pending.rfind(b"\n") + 1
        if end:
            # Every complete line at once: decoding, masking and writing a block
            # costs a fraction of doing it line by line (output can be gigabytes).
            self._block(bytes(self._pending[:end]), complete=True)
            del self._pending[:end]
        while len(self._pending) > MAX_LINE_BYTES:
            # Cut at the last space of the piece when there is one, so that a
            # secret (a word) is not split in two and missed by the masking,
            # and never inside a UTF-8 character.
            cut = self._pending.rfind(b" ", 0, MAX_LINE_BYTES) + 1 or MAX_LINE_BYTES
            while cut > 1 and self._pending[cut] & 0xC0 == 0x80:
                cut -= 1
            self._block(bytes(self._pending[:cut]), complete=False)
            del self._pending[:cut]

    def _block(self, data: bytes, complete: bool) -> None:
        """Complete lines (``complete``), or a piece of a longer line."""
        text = _masked_line(data)
        if self._log is not None:
            if not self.omitted_bytes and self.logged_bytes + len(data) <= MAX_LOG_BYTES:
                self._log.write(text)
                self.logged_bytes += len(data)
            else:
                self.omitted_bytes += len(data)
        self._tail = (self._tail + text)[-OUTPUT_TAIL_CHARS:]
        self.lines += text.count("\n")
        if self._on_line is not None:
            lines = text.split("\n")
            if complete:
                lines.pop()  # what follows the last newline: nothing
            for line in lines:
                self._on_line(line.rstrip("\r"))

    def output(self) -> str:
        return self._tail


def log_footer(follower: OutputFollower) -> str:
    """What ends a step's log: when it was cut, the notice and the tail."""
    if not follower.omitted_bytes:
        return ""
    tail = follower.output()
    return (
        f"[cicd] output cut: {follower.omitted_bytes} bytes after the first {MAX_LOG_BYTES} "
        f"are not kept; the last {len(tail)} characters follow\n{tail}"
    )
