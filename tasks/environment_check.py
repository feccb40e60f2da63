"""Is a reused environment still what was installed? Checked before every reuse.

An environment is marked ready once and then shared by every run with the same
dependency inputs (``tasks/environments.py``); a file truncated by a full disk,
a crash or a stray tool would otherwise be trusted forever ("pytest (exit 1)",
no hint). The installer records every file it wrote in the distribution's
``RECORD`` (path, ``sha256=`` urlsafe-base64 digest, size:
https://packaging.python.org/en/latest/specifications/recording-installed-packages/#the-record-file).

What is checked, chosen to cost milliseconds on an environment of thousands of
files (measured: 0.1-0.25 s for an environment of pytest and coverage on the
shared 2-core box at load averages of 5-20):

* the interpreter link ``bin/python`` resolves;
* every file of every ``RECORD`` exists with the recorded size (one ``stat``
  each: a truncated or missing file is caught wherever it is);
* the files of the distributions cicd-flows itself runs (pytest, its plugins'
  core, coverage, pytest-benchmark) and every console script are hashed against
  the ``RECORD``: a same-size edit of those is caught too. Other files are not
  hashed (hashing a large scientific stack on every run would cost seconds).

Files without a size in ``RECORD`` (``RECORD`` itself, ``.pyc`` files that
installers add) are skipped.

A file whose hash matched is not hashed again while its ``stat`` says it is
the very same file (inode, size, modification and change times, nanoseconds):
writing a file, also in place and to the same size, or replacing it, changes
its ``st_ctime``, which no user-space call sets back
(https://man7.org/linux/man-pages/man7/inode.7.html). Those signatures are
kept for the process and in ``<environment>.verified`` beside the environment
(the directory of environments, which a job's box does not mount), so a run
checks an environment of thousands of files with one ``stat`` each.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger("cicd.environments")

# Distributions whose every file is hashed: what the jobs run in the environment.
HASHED_DISTRIBUTIONS = frozenset(
    {"pytest", "pluggy", "iniconfig", "coverage", "pytest_benchmark", "packaging"}
)


@dataclass(frozen=True)
class Damage:
    """Why an environment cannot be trusted, and the distribution it hit (if any)."""

    reason: str
    distribution: str = ""
    # The damaged file shares its inode with another copy (an installer's cache
    # linked it in): that copy is damaged too.
    shared_inode: bool = False


def _record_rows(record: Path) -> Iterator[tuple[str, str, str]]:
    with record.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) >= 3:
                yield row[0], row[1], row[2]


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _distribution_name(info: Path) -> str:
    return info.name.removesuffix(".dist-info").partition("-")[0].lower()


# A file as stat shows it: inode, size, modification and change times.
Signature = tuple[int, int, int, int]
# Hashed files that matched their RECORD, by path, with their signature then.
_matched: dict[str, Signature] = {}
_matched_lock = threading.Lock()


def _signature(stat: os.stat_result) -> Signature:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _file_damage(
    site: str, name: str, row: tuple[str, str, str], hashed: bool, matched: dict[str, Signature]
) -> Damage | None:
    relative, recorded_hash, recorded_size = row
    if not recorded_size:
        return None
    path = os.path.join(site, relative)
    if relative.startswith(".."):
        path = os.path.realpath(path)
    shown = f"{relative} (of {name})"
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return Damage(f"{shown} is missing", name)
    except OSError as exc:
        return Damage(f"{shown} cannot be read: {exc.strerror}", name)
    shared = stat.st_nlink > 1
    if str(stat.st_size) != recorded_size.strip():
        return Damage(f"{shown} is {stat.st_size} bytes, RECORD says {recorded_size}", name, shared)
    in_bin = relative.startswith("../../../bin/")
    if not ((hashed or in_bin) and recorded_hash.startswith("sha256=")):
        return None
    signature = _signature(stat)
    if matched.get(path) == signature:
        return None  # the very file that matched before
    if _digest(Path(path)) != recorded_hash.removeprefix("sha256="):
        return Damage(f"{shown} does not match its RECORD sha256", name, shared)
    matched[path] = signature
    return None


def _memo_path(env: Path) -> Path:
    return env.with_name(env.name + ".verified")


def _load_matched(env: Path) -> dict[str, Signature]:
    """What matched before: this process's, then the environment's memo file."""
    # Console scripts are recorded as ../../../bin/x and kept by their real path.
    prefix = (str(env) + os.sep, os.path.realpath(env) + os.sep)
    with _matched_lock:
        known = {path: sig for path, sig in _matched.items() if path.startswith(prefix)}
    if known:
        return known
    try:
        stored = json.loads(_memo_path(env).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {
        path: (sig[0], sig[1], sig[2], sig[3])
        for path, sig in stored.items()
        if isinstance(path, str)
        and path.startswith(prefix)
        and isinstance(sig, list)
        and len(sig) == 4
        and all(isinstance(part, int) for part in sig)
    }


def _store_matched(env: Path, matched: dict[str, Signature], before: dict[str, Signature]) -> None:
    with _matched_lock:
        _matched.update(matched)
    if matched == before:
        return
    memo = _memo_path(env)
    temporary = memo.with_name(f"{memo.name}.{os.getpid()}.{threading.get_ident()}")
    # A memo that cannot be written only costs the next run its hashing.
    with contextlib.suppress(OSError):
        temporary.write_text(json.dumps(matched), encoding="utf-8")
        os.replace(temporary, memo)


def environment_damage(env: Path, hashed: Iterable[str] = HASHED_DISTRIBUTIONS) -> Damage | None:
    """The first sign that ``env`` is not what was installed, or None."""
    python = env / "bin" / "python"
    if not python.exists():  # follows the link: a dangling interpreter link fails too
        return Damage(f"{python} is missing or points nowhere")
    if not os.access(python, os.X_OK):
        return Damage(f"{python} is not executable")
    hashed_names = {name.replace("-", "_").lower() for name in hashed}
    infos = sorted(env.glob("lib/python*/site-packages/*.dist-info"))
    before = _load_matched(env)
    matched = dict(before)
    for info in infos:
        record = info / "RECORD"
        name = _distribution_name(info)
        if not record.is_file():
            return Damage(f"{info.name} has no RECORD", name)
        try:
            rows = list(_record_rows(record))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return Damage(f"{record} cannot be read: {exc}", name)
        site = str(info.parent)
        for row in rows:
            damage = _file_damage(site, name, row, name in hashed_names, matched)
            if damage is not None:
                return damage
    _store_matched(env, matched, before)
    return None


def untrusted_reason(env: Path, ready_marker: str) -> str | None:
    """Why the ready environment at ``env`` must not be reused; None when it may be.

    None too when ``env`` is not marked ready (it is built, not healed).
    """
    if not (env / ready_marker).is_file():
        return None
    damage = environment_damage(env)
    return None if damage is None else damage.reason


def prepare_rebuild(env: Path, uv: str, log_path: Path | None) -> dict[str, str]:
    """Log why ``env`` is rebuilt and make the rebuild independent of the damage.

    uv links installed files from its cache (hard links where it can:
    https://docs.astral.sh/uv/reference/settings/#link-mode), so a file damaged
    in place is damaged in the cache too: that distribution is cleaned from the
    cache first, and the rebuild copies files instead of linking them. Returns
    the variables the install runs with.
    """
    from cicd import command

    damage = environment_damage(env)
    if damage is None:
        return {}
    message = f"environment {env.name} is damaged, rebuilding it: {damage.reason}"
    _log.warning("%s", message)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(f"cicd: {message}\n")
    if damage.shared_inode and damage.distribution:
        command.run(
            [uv, "cache", "clean", "--", damage.distribution], timeout=300, log_path=log_path
        )
    return {**os.environ, "UV_LINK_MODE": "copy"}
