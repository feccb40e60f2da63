"""What users may pass to git: repository addresses, refs and SHAs, checked as data.

Pure (no git, no file system except validate_repo_address), so the webhook and
the poller can refuse a delivery before anything runs. Every check raises
BadInput naming the value, quoted and cut short (it is the attacker's text).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from cicd.errors import BadInput

MAX_ADDRESS_CHARS = 2048
MAX_REF_CHARS = 1024
# Values shown in error messages are cut to this: the value is the attacker's text.
SHOWN_CHARS = 80
URL_SCHEMES = ("file", "https", "ssh")

_HEX_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A revision suffix after a valid name: ~N and ^N, as in HEAD~1 or v1.0^.
_REVISION_SUFFIX = re.compile(r"(?:[~^][0-9]*)*")
# user@host:path or host:path (https://git-scm.com/docs/git-clone#_git_urls): no slash before
# the colon; neither user nor host may start with '-' (ssh would read an option, CVE-2017-1000117).
_SCP_LIKE = re.compile(
    r"(?:[A-Za-z0-9_.+][A-Za-z0-9_.+-]*@)?"  # user@
    r"(?:[A-Za-z0-9_.][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:.]+\])"  # host or [IPv6]
    r":\S+"  # :path
)
_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")


def shown(value: str) -> str:
    """``value`` for an error message: quoted, control characters escaped, cut short."""
    cut = value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."
    return repr(cut) + ("" if len(value) <= SHOWN_CHARS else f" ({len(value)} characters)")


def _refuse(what: str, value: str, why: str) -> BadInput:
    return BadInput(f"{what} {shown(value)}: {why}")


def check_repo_address(repo: str, *, what: str = "repository", allow_local: bool = True) -> str:
    """``repo`` when it is a repository address git will read as data; else BadInput.

    Accepted: local paths, ``file://``, ``https://``, ``ssh://`` and scp-like
    ``[user@]host:path``. Refused: anything starting with ``-`` (an option),
    ``<transport>::`` forms (``ext::`` runs a command), other schemes, control
    characters and whitespace in URLs, and values over MAX_ADDRESS_CHARS.
    Pure: the file system is not consulted (see validate_repo_address).
    """
    if not isinstance(repo, str) or not repo:
        raise BadInput(f"{what} address is empty")
    if len(repo) > MAX_ADDRESS_CHARS:
        raise _refuse(what, repo, f"longer than {MAX_ADDRESS_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in repo):
        raise _refuse(what, repo, "contains control characters")
    if repo.startswith("-"):
        raise _refuse(what, repo, "starts with '-' (git would read it as an option)")
    if _TRANSPORT.match(repo):
        raise _refuse(what, repo, "'<transport>::' addresses are refused (ext:: runs commands)")
    if "://" in repo:
        parts = urlsplit(repo)
        if parts.scheme.lower() not in URL_SCHEMES:
            raise _refuse(what, repo, f"scheme must be one of {', '.join(URL_SCHEMES)}")
        if parts.scheme.lower() == "file":
            if not allow_local:
                raise _refuse(what, repo, "must be a remote URL (https, ssh)")
            return repo
        host = parts.hostname or ""
        if not host or host.startswith("-") or (parts.username or "").startswith("-"):
            raise _refuse(what, repo, "needs a host that does not start with '-'")
        if any(c.isspace() for c in repo):
            raise _refuse(what, repo, "contains whitespace")
        return repo
    colon, slash = repo.find(":"), repo.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        # git reads this as scp-like ssh, never as a local path.
        if not _SCP_LIKE.fullmatch(repo):
            raise _refuse(what, repo, "is not a valid [user@]host:path address")
        return repo
    if not allow_local:
        raise _refuse(what, repo, "must be a remote URL (https, ssh)")
    return repo


def is_remote(repo: str) -> bool:
    """True for URLs (``file://`` too) and scp-like addresses: what is not a local path."""
    if "://" in repo:
        return True
    colon, slash = repo.find(":"), repo.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


def validate_repo_address(repo: str) -> str:
    """check_repo_address, and a local path must be an existing directory: its absolute path."""
    repo = check_repo_address(repo)
    if is_remote(repo):
        return repo
    path = Path(repo).expanduser().resolve()
    if not path.is_dir():
        raise _refuse("repository", repo, "does not exist (not a directory)")
    return str(path)


def check_ref(ref: str, *, what: str = "ref") -> str:
    """``ref`` when it is a ref name by ``git check-ref-format --allow-onelevel`` rules
    (https://git-scm.com/docs/git-check-ref-format), a hex SHA, or one of those
    followed by ``~N``/``^N`` (HEAD~1); else BadInput. Never starts with '-'."""
    if not isinstance(ref, str) or not ref:
        raise BadInput(f"{what} is empty")
    if len(ref) > MAX_REF_CHARS:
        raise _refuse(what, ref, f"longer than {MAX_REF_CHARS} characters")
    name = re.split(r"[~^]", ref, maxsplit=1)[0]
    suffix = ref[len(name) :]
    problem = _ref_name_problem(name)
    if problem is None and not _REVISION_SUFFIX.fullmatch(suffix):
        problem = "only ~N and ^N may follow the name"
    if problem is not None:
        raise _refuse(what, ref, f"is not a valid ref ({problem})")
    return ref


def _ref_name_problem(name: str) -> str | None:
    # The numbered rules of git-check-ref-format, and a leading '-' (an option).
    if not name:
        return "empty name"
    if name.startswith("-"):
        return "starts with '-'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "control characters"
    bad = next((c for c in " ~^:?*[\\" if c in name), None)
    if bad is not None:
        return f"contains {bad!r}"
    if name == "@" or "@{" in name:
        return "contains '@{' or is '@'"
    if ".." in name or "//" in name:
        return "contains '..' or '//'"
    if name.startswith("/") or name.endswith("/") or name.endswith("."):
        return "starts or ends with '/' or ends with '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "a component starts with '.' or ends with '.lock'"
    return None


def check_commit_sha(sha: str, *, what: str = "commit") -> str:
    """``sha`` when it is a full 40- or 64-hex object id (lower case)."""
    if not isinstance(sha, str) or not _HEX_SHA.fullmatch(sha):
        raise BadInput(f"{what} {shown(str(sha))}: expected a full hex commit SHA")
    return sha
