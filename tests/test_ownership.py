"""Ownership (cicd.ownership) and reclaiming (cicd.reclaim) against real
processes, real locks and real PID namespaces.

An owner is a real process holding a claim; "dead" is a SIGKILL of it, never
a fake record. Processes are stopped by the test that started them, by PID.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd import ownership, reclaim
from cicd.ownership import HostIdentity, ProcessRef

REPO_ROOT = Path(__file__).resolve().parent.parent

HOLDER = textwrap.dedent("""\
    import json, subprocess, sys, time
    from pathlib import Path
    from cicd import ownership
    home = Path(sys.argv[1])
    home.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    held = ownership.claim(
        "test", processes=(ownership.ProcessRef.of(child.pid),), paths_owned=(home,),
    )
    print(json.dumps({"token": held.record.token, "child": child.pid}), flush=True)
    time.sleep(300)
    """)


@pytest.fixture
def cicd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cicd-home"
    monkeypatch.setenv("CICD_HOME", str(home))
    return home


def alive(pid: int) -> bool:
    return ownership.start_time(pid) is not None


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def kill_if_alive(pid: int, start: int | None) -> None:
    # By PID and start time: only the very process this test started.
    if start is not None and ownership.start_time(pid) == start:
        os.killpg(pid, signal.SIGKILL)


Holder = tuple[subprocess.Popen[str], dict[str, int]]


@pytest.fixture
def holder(cicd_home: Path, tmp_path: Path) -> Iterator[Holder]:
    """A live owner process: its claim names a sleeping child and a directory."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "owned-dir")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    child_start = ownership.start_time(info["child"])
    try:
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_if_alive(info["child"], child_start)


def record_of(token: str) -> ownership.Record:
    (found,) = [r for _, r in ownership.records() if r is not None and r.token == token]
    return found


# --- the primitive ---------------------------------------------------------------


def test_a_held_lock_is_not_gone_and_a_killed_holder_is(holder: Holder) -> None:
    proc, info = holder
    record = record_of(info["token"])
    assert record.owner_pid == proc.pid
    assert record.host == HostIdentity.current()

    assert ownership.owner_is_gone(record) is False

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ownership.owner_is_gone(record) is True  # the kernel dropped its lock


def test_a_claim_of_this_process_is_not_gone_until_released(cicd_home: Path) -> None:
    held = ownership.claim("test")
    assert ownership.owner_is_gone(held.record) is False
    lock = held.record.lock_path(ownership.owned_dir())
    held.release()
    held.release()  # idempotent
    assert not lock.exists() and not held.record_path.exists()
    assert ownership.owner_is_gone(held.record) is False  # no lock file proves nothing


def test_another_hosts_record_is_never_judged_by_a_local_lock(cicd_home: Path) -> None:
    held = ownership.claim("test")
    here = HostIdentity.current()
    elsewhere = dataclasses.replace(
        held.record, host=HostIdentity("other-boot", "other-machine", "worker-2")
    )
    # Its lock held: not gone, from any host.
    assert ownership.owner_is_gone(elsewhere) is False
    lock = held.record.lock_path(ownership.owned_dir())
    os.close(held._fd)  # the holder dies: the lock is free
    held._fd = None
    assert ownership.lock_file_is_free(lock)
    # Free, but on a local file system another machine's lock is invisible here.
    assert ownership.owner_is_gone(elsewhere) is False
    # This machine before its last boot: nothing of that boot is alive.
    rebooted = dataclasses.replace(
        held.record, host=HostIdentity("old-boot", here.machine_id, here.hostname)
    )
    assert ownership.owner_is_gone(rebooted) is (bool(here.machine_id))
    assert ownership.owner_is_gone(held.record) is True


def test_nfs_shares_flock_only_without_local_locks() -> None:
    assert ownership.nfs_shares_flock("nfs4", "rw,vers=4.2,local_lock=none,addr=10.0.0.1")
    assert ownership.nfs_shares_flock("nfs", "rw,vers=3,local_lock=posix")
    assert not ownership.nfs_shares_flock("nfs", "rw,vers=3,local_lock=flock")
    assert not ownership.nfs_shares_flock("nfs4", "rw,local_lock=all")
    assert not ownership.nfs_shares_flock("ext4", "rw")
    assert not ownership.nfs_shares_flock("cifs", "rw")


# --- reclaiming --------------------------------------------------------------------


def test_reclaim_kills_and_removes_only_what_a_dead_owner_held(
    holder: Holder, tmp_path: Path
) -> None:
    proc, info = holder
    # This process's own claim, on a live sleeper: must survive.
    mine = subprocess.Popen(["sleep", "300"], start_new_session=True)
    kept = tmp_path / "kept"
    kept.mkdir()
    live = ownership.claim("test", processes=(ProcessRef.of(mine.pid),), paths_owned=(kept,))
    try:
        assert reclaim.reclaim() == []  # both owners alive
        assert alive(info["child"]) and (tmp_path / "owned-dir").is_dir()

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert [r.token for r in reclaim.reclaim(dry_run=True)] == [info["token"]]
        assert alive(info["child"])  # a dry run touches nothing

        (done,) = reclaim.reclaim()

        assert done.token == info["token"] and done.killed == (info["child"],)
        assert done.removed == (str(tmp_path / "owned-dir"),)
        assert wait_gone(info["child"])
        assert not (tmp_path / "owned-dir").exists()
        assert mine.poll() is None and kept.is_dir()
        assert [r.token for _, r in ownership.records() if r] == [live.record.token]
        assert reclaim.reclaim() == []
    finally:
        live.release()
        mine.kill()
        mine.wait()


def test_a_recycled_pid_or_a_missing_marker_is_never_killed(cicd_home: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        real = ProcessRef.of(stranger.pid)
        cases = [
            dataclasses.replace(real, start_time=(real.start_time or 0) - 1),  # PID reused
            dataclasses.replace(real, marker="-Dcicd.flows.token=abc"),  # not our server
            dataclasses.replace(real, start_time=None),  # nothing proves it
        ]
        for ref in cases:
            held = ownership.claim("test", processes=(ref,))
            os.close(held._fd)  # its owner is gone
            held._fd = None
        assert len(reclaim.reclaim()) == 3
        time.sleep(0.2)
        assert stranger.poll() is None
        assert ownership.records() == []
    finally:
        stranger.kill()
        stranger.wait()


# --- across PID namespaces (no JVM) ---------------------------------------------------

NAMESPACED_REAPER = textwrap.dedent("""\
    import json
    from cicd import ownership, reclaim
    done = reclaim.reclaim()
    print(json.dumps({"ns": ownership.pid_namespace(), "done": [d.to_json() for d in done]}))
    """)


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not unshare_available(), reason="unshare --pid needs root (or user namespaces)"
)


@needs_unshare
def test_a_reaper_in_another_pid_namespace_never_touches_what_it_cannot_see(
    holder: Holder,
) -> None:
    proc, info = holder

    def reap_from_a_child_namespace() -> dict[str, object]:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NAMESPACED_REAPER],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        result: dict[str, object] = json.loads(done.stdout)
        return result

    seen = reap_from_a_child_namespace()
    assert seen["ns"] != ownership.pid_namespace()
    # From there the owner's PID names nobody (or someone else): its lock says it lives.
    assert seen["done"] == []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = reap_from_a_child_namespace()["done"]  # type: ignore[misc]
    # Dead owner, but its child is out of that namespace's sight: left alone.
    assert "out of sight" in left["left"]
    assert alive(info["child"]) and record_of(info["token"])
    # From here (the initial namespace) everything is in sight.
    (done,) = reclaim.reclaim()
    assert done.killed == (info["child"],)
    assert wait_gone(info["child"])


# --- across PID namespaces, with a real Neo4j ------------------------------------------

NAMESPACED_OWNER = textwrap.dedent("""\
    import json, os, sys, time
    from pathlib import Path
    from cicd import ownership
    from cicd.config import ServiceConfig
    from tasks.services.neo4j_process import Neo4jProcessBackend
    server = Neo4jProcessBackend().start("neo4j", ServiceConfig(), Path(sys.argv[1]))
    print(json.dumps({"uri": server.endpoint.uri, "home": str(server.home),
                      "ns": ownership.pid_namespace()}), flush=True)
    time.sleep(600)
    """)


@needs_unshare
@pytest.mark.neo4j
@pytest.mark.slow
def test_a_live_neo4j_owned_in_another_pid_namespace_is_reaped_only_once_its_owner_dies(
    cicd_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neo4j import GraphDatabase

    from tasks.services.neo4j_reaping import reap_orphans, server_records

    jars = Path.home() / ".cache" / "cicd-flows" / "services" / "neo4j" / "5.26.30"
    monkeypatch.setenv("CICD_NEO4J_HOME", os.environ.get("CICD_NEO4J_HOME") or str(jars))
    # The owner is not the namespace's init (sh is, and stays): once the owner
    # dies its server lives on in that namespace, as in a worker container.
    script = tmp_path / "owner.py"
    script.write_text(NAMESPACED_OWNER)
    owner_cmd = f"{sys.executable} {script} {tmp_path / 'run'} & exec sleep 900"
    box = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", owner_cmd],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert box.stdout is not None
        started = json.loads(box.stdout.readline())
        (server,) = server_records()
        ref = server.claim.processes[0]
        assert ref.pid_ns == started["ns"] != ownership.pid_namespace()
        server_pid = reclaim.local_pid(ref)  # its PID as seen from here
        assert server_pid is not None and server_pid != ref.pid

        def answers() -> bool:
            with GraphDatabase.driver(started["uri"], auth=("neo4j", "test-password")) as d:
                records, _, _ = d.execute_query("RETURN 1 AS one", database_="neo4j")
            return bool(records[0]["one"] == 1)

        # Its owner lives in the other namespace: the reaper here leaves it be.
        assert reap_orphans() == []
        assert answers() and Path(started["home"]).is_dir()

        owner = reclaim.local_pid(ProcessRef(server.claim.owner_pid, None, ref.pid_ns))
        assert owner is not None
        os.kill(owner, signal.SIGKILL)
        assert wait_gone(owner)
        assert alive(server_pid)  # orphaned, still serving, in the other namespace

        assert reap_orphans() == [server_pid]
        assert wait_gone(server_pid)
        assert not Path(started["home"]).exists()
        assert server_records() == []
    finally:
        # The namespace's init: killing it ends every process in that namespace.
        os.killpg(box.pid, signal.SIGKILL)
        box.wait()


def test_cicd_gc_dry_run_lists_and_gc_reclaims(holder: Holder, cicd_home: Path) -> None:
    proc, info = holder
    cicd = [str(Path(sys.executable).parent / "cicd"), "gc"]
    env = {**os.environ, "CICD_HOME": str(cicd_home)}
    live = subprocess.run([*cicd, "--json"], env=env, capture_output=True, text=True, check=False)
    assert live.returncode == 0 and json.loads(live.stdout)["reclaimed"] == []
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    dry = subprocess.run(
        [*cicd, "--dry-run", "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, dry.stderr
    (listed,) = json.loads(dry.stdout)["reclaimed"]
    assert listed["token"] == info["token"] and listed["killed"] == [info["child"]]
    assert alive(info["child"]) and record_of(info["token"])

    done = subprocess.run(cicd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"reclaimed test {info['token']}" in done.stdout
    assert f"killed pid {info['child']}" in done.stdout
    assert wait_gone(info["child"])
    assert ownership.records() == []
