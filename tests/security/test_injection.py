"""Attacks by injection: every value a user, a deployment run, a webhook or a
repository can set is data, never an option or a command (issue 13, item 1).

Each attack names a sentinel file that the injected command would create; every
test asserts the file does not exist afterwards, and that the refusal exits 2
(BadInput, or 400 for the webhook) naming the field and the value. All parts
are real: the ``cicd`` CLI as a subprocess, the flow as ``prefect deployment
run`` calls it, the webhook receiver over HTTP with a valid HMAC, real git.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cicd.errors import BadInput
from cicd.sample import commit_all, create_sample_repo, git
from tests.conftest import BIN

# The CLI and the flows talk to the session's Prefect server.
pytestmark = pytest.mark.usefixtures("prefect_server")

SECRET = "injection-test-secret"

# What the issue reproduced, and its friends: each would run `touch pwned` in the cwd.
REPO_ATTACKS = [
    "--upload-pack=touch pwned@x:y",
    "--upload-pack=touch pwned",
    "-utouch pwned@x:y",
    "--config=core.sshCommand=touch pwned@x:y",
    "ext::sh -c touch% pwned",
    "ext::sh -c touch% /tmp/pwned",
    "fd::0",
    "ssh://-oProxyCommand=touch% pwned/x",
    "git@-oProxyCommand=touch pwned:x",
]
REF_ATTACKS = [
    "--output=pwned",
    "--upload-pack=touch pwned",
    "-o pwned",
    "main:pwned",
    "HEAD@{--output=pwned}",
    "main^{--output=pwned}",
    "main\n--output=pwned",
]
PACKAGE_ATTACKS = ["--target=pwned", "-e .", "-r pwned", "--index-url=http://127.0.0.1:9/pwned"]


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def assert_refused(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("cicd: error:")]
    assert len(error) == 1, result.stderr
    for text in named:
        assert text in error[0], error[0]
    # Refused before git ran, not a clone or fetch that failed.
    assert "cannot read repository" not in error[0]


def no_sentinel(where: Path) -> None:
    # `touch pwned@x:y` and friends: any file whose name starts with pwned.
    assert not list(where.glob("pwned*"))
    # The issue's own `ext::sh -c touch% /tmp/pwned`: shared, so only "not made by us".
    shared = Path("/tmp/pwned")
    assert not shared.exists() or shared.stat().st_mtime < SESSION_START


SESSION_START = time.time()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real repository: the sample project, one commit on main."""
    return create_sample_repo(tmp_path_factory.mktemp("target") / "agentkit")


# --- repo ----------------------------------------------------------------------------


@pytest.mark.parametrize("repo", REPO_ATTACKS)
def test_repo_injection_from_the_cli_is_refused(tmp_path: Path, repo: str) -> None:
    # `--repo=VALUE`: argparse would take a lone "--x" for an option of its own.
    result = run_cli(tmp_path, "run", "pr-validation", f"--repo={repo}", "--ref", "main")

    assert_refused(result, "repository", repr(repo)[:40])
    no_sentinel(tmp_path)


@pytest.mark.parametrize("repo", REPO_ATTACKS[:1] + REPO_ATTACKS[4:5])
def test_repo_injection_as_a_deployment_run_calls_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: str
) -> None:
    from flows.pr_validation import pr_validation

    # `prefect deployment run -p repo=...`: the worker calls the flow with the parameter.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput, match="repository") as refused:
        pr_validation(repo=repo, ref="main")
    assert repo[:30] in str(refused.value)
    no_sentinel(tmp_path)


def test_git_itself_refuses_ext_even_past_our_checks(tmp_path: Path) -> None:
    # Defence in depth: GIT_ALLOW_PROTOCOL in the one runner. A check that
    # missed an address would still not get a command run.
    from cicd.git import _run

    result = _run("-C", tmp_path, "ls-remote", "--", f"ext::sh -c touch% {tmp_path}/pwned")
    assert not result.ok
    assert "transport 'ext' not allowed" in result.stderr
    no_sentinel(tmp_path)


def test_accepted_addresses_still_work(target: Path) -> None:
    from cicd.git import check_repo_address, ls_remote

    for address in ("https://github.com/acme/app.git", "ssh://git@host:22/app",
                    "git@github.com:acme/app.git", "file:///srv/app.git", str(target)):  # fmt: skip
        assert check_repo_address(address) == address
    assert "refs/heads/main" in ls_remote(str(target))
    assert "refs/heads/main" in ls_remote(f"file://{target}")


def test_overlong_and_control_character_addresses_are_refused(tmp_path: Path) -> None:
    for repo in ("x" * 5000, "/tmp/a\nb", "https://h/a\x1b[2Jb"):
        result = run_cli(tmp_path, "run", "pr-validation", f"--repo={repo}", "--ref", "main")
        assert_refused(result, "repository")
        # The value is named, cut short: not 5000 characters on one line, nor in the logs.
        error = next(line for line in result.stderr.splitlines() if line.startswith("cicd:"))
        assert len(error) < 300
        assert "x" * 200 not in result.stderr


# --- ref -----------------------------------------------------------------------------


@pytest.mark.parametrize("ref", REF_ATTACKS)
def test_ref_injection_from_the_cli_is_refused(tmp_path: Path, target: Path, ref: str) -> None:
    result = run_cli(tmp_path, "run", "pr-validation", "--repo", str(target), f"--ref={ref}")

    assert_refused(result, "ref", repr(ref)[:20])
    no_sentinel(tmp_path)
    no_sentinel(target)


def test_base_injection_is_refused(tmp_path: Path, target: Path) -> None:
    args = ("run", "pr-validation", "--repo", str(target), "--ref", "main")
    result = run_cli(tmp_path, *args, "--base=--output=pwned")

    assert_refused(result, "base", "'--output=pwned'")
    no_sentinel(tmp_path)


@pytest.mark.parametrize("ref", REF_ATTACKS)
def test_refs_are_checked_before_git_sees_them(tmp_path: Path, target: Path, ref: str) -> None:
    from cicd.git import checkout, resolve_commit

    for call in (lambda: checkout(str(target), ref), lambda: resolve_commit(target, ref)):
        with pytest.raises(BadInput, match=r"ref .*is not a valid ref"):
            call()
    no_sentinel(tmp_path)


def test_valid_ref_forms_resolve_to_a_commit(target: Path) -> None:
    from cicd.git import check_ref, resolve_commit

    head = git(target, "rev-parse", "HEAD")
    git(target, "tag", "v1.0.0")
    for ref in ("main", "HEAD", "v1.0.0", "refs/heads/main", head, f"{head}~0"):
        assert resolve_commit(target, ref) == head
    for ref in ("HEAD~1", "feature/x", "v1.0^", "a" * 64):
        assert check_ref(ref) == ref


# --- webhook ---------------------------------------------------------------------------


class Starts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        self.calls.append((deployment, parameters))
        return f"run-{len(self.calls)}"


@pytest.fixture
def receiver() -> Iterator[tuple[str, Starts]]:
    from deployments.webhook import make_server

    starts = Starts()
    server = make_server("127.0.0.1", 0, SECRET, starts)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.url, starts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def deliver(url: str, event: str, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={digest}",
               "Content-Type": "application/json"}  # fmt: skip
    return httpx.post(url + "hook", content=body, headers=headers, timeout=10)


def push(clone_url: str, after: str = "b" * 40, ref: str = "refs/heads/main") -> dict[str, Any]:
    return {"ref": ref, "before": "a" * 40, "after": after,
            "repository": {"clone_url": clone_url}}  # fmt: skip


def pull_request(clone_url: str, head_sha: str = "c" * 40, head_ref: str = "f") -> dict[str, Any]:
    head = {"sha": head_sha, "ref": head_ref, "repo": {"clone_url": clone_url}}
    base = {"sha": "a" * 40, "ref": "main", "repo": {"clone_url": "https://h/a.git"}}
    return {"action": "opened", "number": 1, "pull_request": {"head": head, "base": base}}


@pytest.mark.parametrize("clone_url", [*REPO_ATTACKS, "/srv/git/app", "file:///srv/app"])
def test_webhook_clone_url_injection_is_400_and_starts_nothing(
    receiver: tuple[str, Starts], clone_url: str
) -> None:
    url, starts = receiver
    for event, payload, field in (
        ("push", push(clone_url), "repository.clone_url"),
        ("push", push(clone_url, ref="refs/tags/v1.0.0"), "repository.clone_url"),
        ("pull_request", pull_request(clone_url), "pull_request.head.repo.clone_url"),
    ):
        response = deliver(url, event, payload)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert field in error and clone_url[:20] in error
    assert starts.calls == []


@pytest.mark.parametrize(
    ("event", "payload", "field"),
    [
        ("push", push("https://h/a.git", after="--output=pwned"), "'after'"),
        ("push", push("https://h/a.git", ref="refs/tags/v1:x"), "'ref'"),
        ("pull_request", pull_request("https://h/a.git", head_sha="-o x"), "head.sha"),
        ("pull_request", pull_request("https://h/a.git", head_ref="--x"), "head.ref"),
        ("create", {"ref_type": "tag", "ref": "v1..2", "repository": {"clone_url": "https://h/a"}},
         "'ref'"),
    ],
)  # fmt: skip
def test_webhook_ref_injection_is_400_and_starts_nothing(
    receiver: tuple[str, Starts], event: str, payload: dict[str, Any], field: str
) -> None:
    url, starts = receiver
    response = deliver(url, event, payload)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert starts.calls == []


def test_webhook_still_starts_valid_deliveries(receiver: tuple[str, Starts]) -> None:
    url, starts = receiver
    assert deliver(url, "push", push("git@github.com:acme/app.git")).status_code == 202
    assert starts.calls[0][1]["repo"] == "git@github.com:acme/app.git"


# --- poller ------------------------------------------------------------------------------


def test_poller_refuses_bad_targets_and_ignores_bad_remote_refs() -> None:
    from flows.git_poller import parse_ls_remote, parse_targets

    with pytest.raises(BadInput, match=r"targets\[0\]: repo: .*'--upload-pack=touch pwned@x:y'"):
        parse_targets([{"repo": "--upload-pack=touch pwned@x:y"}], "targets")
    with pytest.raises(BadInput, match=r"targets\[0\]: branches: .*'--output=x'"):
        parse_targets([{"repo": "https://h/a.git", "branches": ["--output=x"]}], "targets")
    # A remote is not trusted either: its tag names become the ref of release runs.
    listing = f"{'a' * 40}\trefs/tags/-x\n{'b' * 40}\trefs/tags/v1\n--x\trefs/heads/main\n"
    refs = parse_ls_remote(listing)
    assert refs.tags == {"v1": "b" * 40} and refs.branches == {}


def test_poller_ls_remote_injection_is_refused_before_git_runs(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.git_poller import ls_remote

    # Where `git ls-remote --upload-pack=CMD` (no repository: the cwd's origin) ran
    # CMD before the address was checked and passed after `--`.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", "--", str(target), str(clone))
    monkeypatch.chdir(clone)
    for repo in ("--upload-pack=touch pwned@x:y", "ext::sh -c touch% pwned"):
        with pytest.raises(BadInput, match="repository"):
            ls_remote(repo)
    no_sentinel(clone)


# --- packages ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package_attack_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = create_sample_repo(tmp_path_factory.mktemp("packages") / "agentkit")
    config = repo / "cicd.yaml"
    text = config.read_text()
    assert "  extras: [dev, integration]\n" in text
    for index, package in enumerate(PACKAGE_ATTACKS):
        git(repo, "checkout", "--quiet", "-B", f"attack-{index}", "main")
        extras = "  extras: [dev, integration]\n"
        packages = f"  packages: [six, {json.dumps(package)}]\n"
        config.write_text(text.replace(extras, extras + packages))
        commit_all(repo, f"ci: package {package}")
        git(repo, "checkout", "--quiet", "main")
    return repo


@pytest.mark.parametrize("index", range(len(PACKAGE_ATTACKS)))
def test_package_injection_is_refused(
    tmp_path: Path, package_attack_repo: Path, index: int
) -> None:
    repo = str(package_attack_repo)
    result = run_cli(tmp_path, "run", "pr-validation", "--repo", repo, "--ref", f"attack-{index}")

    assert_refused(result, "environment.packages[1]", repr(PACKAGE_ATTACKS[index]))
    no_sentinel(tmp_path)
    no_sentinel(package_attack_repo)


def test_requirements_are_parsed_and_passed_after_the_end_of_options(tmp_path: Path) -> None:
    from cicd.config import EnvironmentConfig
    from tasks.environments import _install_argv, requirement_strings

    config = EnvironmentConfig(packages=["six", "Requests[socks]>=2 ; python_version>'3'"])
    assert requirement_strings(config, ["pytest"]) == [
        "Requests[socks]>=2; python_version > \"3\"", "pytest", "six"]  # fmt: skip
    argv = _install_argv(
        Path("/venv/bin/python"), Path("/nonexistent"), config, ["pytest"], tmp_path
    )
    assert argv[argv.index("--") + 1 :] == requirement_strings(config, ["pytest"])
    # What is not a requirement never gets that far: the schema refuses it.
    for bad in PACKAGE_ATTACKS:
        with pytest.raises(ValidationError, match=r"packages\.0"):
            EnvironmentConfig(packages=[bad])
