"""Can git read a mirror? The checks that decide whether it is rebuilt.

A mirror is reused by every run of its repository (``cicd.git.update_mirror``);
a pack file cut short (a full disk, a killed ``git gc``) made every later run
fail with "cannot read repository" until someone deleted it by hand. Two signs,
neither needing a walk over the objects:

* every pack's trailer matches its index: a pack ends with the checksum of its
  contents, and its ``.idx`` repeats that checksum just before its own
  (https://git-scm.com/docs/gitformat-pack#_pack_idx_files_have_the_following_format);
  a truncated or replaced pack no longer does, and git refuses it ("packfile
  ... does not match index");
* git's own words when a command failed on the mirror (``CORRUPTION_SIGNS``).
"""

from __future__ import annotations

from pathlib import Path

# What git prints when the object store, not the network, is the trouble.
CORRUPTION_SIGNS = (
    "does not match index",
    "packfile",
    "corrupt",
    "bad object",
    "missing object",
    "inflate",
    "invalid object",
    "bad signature",
    "index file smaller than expected",
)


def _hash_size(mirror: Path) -> int:
    config = mirror / "config"
    text = config.read_text(errors="replace").lower() if config.is_file() else ""
    return 32 if "objectformat = sha256" in text else 20


def pack_damage(mirror: Path) -> str | None:
    """Why the mirror's packs cannot be read, or None when every trailer matches."""
    if not (mirror / "HEAD").is_file() or not (mirror / "objects").is_dir():
        return f"{mirror} has no HEAD or objects directory"
    size = _hash_size(mirror)
    for idx in sorted((mirror / "objects" / "pack").glob("pack-*.idx")):
        pack = idx.with_suffix(".pack")
        try:
            with idx.open("rb") as handle:  # only its tail: an index can be large
                handle.seek(0, 2)
                handle.seek(max(0, handle.tell() - 2 * size))
                idx_tail = handle.read(2 * size)
            with pack.open("rb") as handle:
                header = handle.read(4)
                handle.seek(0, 2)
                length = handle.tell()
                handle.seek(max(0, length - size))
                trailer = handle.read(size)
        except FileNotFoundError:
            return f"{pack.name} is missing (its index {idx.name} is there)"
        except OSError as exc:
            return f"{pack.name} cannot be read: {exc.strerror}"
        if header != b"PACK" or length < 12 + size:
            return f"{pack.name} is not a pack ({length} bytes)"
        if len(idx_tail) < 2 * size or idx_tail[:size] != trailer:
            return f"{pack.name} ({length} bytes) does not match its index: truncated or replaced"
    return None


def looks_corrupt(git_output: str) -> bool:
    """Whether git's message says the object store is damaged."""
    lowered = git_output.lower()
    return any(sign in lowered for sign in CORRUPTION_SIGNS)
