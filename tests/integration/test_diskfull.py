"""Disk trouble (docs/OPERATIONS.md "Disk full"): the store on a small tmpfs that the test
mounts (as root), filled to the brim with a ballast file, and a store whose map is at
[store] map_size_max. Either way the broker answers RETRY_LATER (REASON_STORE_FULL), logs the
episode once, reports it in /metrics and STATUS=, never corrupts the store (coordctl verify
passes), and accepts again without a restart once space is back; every acked record stays."""
import errno
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, RETRY_LATER, Store, envelope_key, expect_ack,
                      free_tcp_port, new_msg_id)

pytestmark = pytest.mark.local_only

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TMPFS_SIZE = "8m"
PUSH_MAX = 20000  # records offered before the test gives up waiting for RETRY_LATER


def coordctl_bin():
    path = os.environ.get("COORDCTL_BIN") or str(REPO / "build" / "clients" / "coordctl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"coordctl binary {path!r} not found (set COORDCTL_BIN)")
    return path


def verify(state_dir):
    p = subprocess.run([coordctl_bin(), "verify", str(state_dir)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"verify failed:\n{p.stdout}{p.stderr}"
    assert "intact" in p.stdout


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh 8 MiB tmpfs, unmounted at teardown (after the daemons it holds stopped:
    request it before coordd_factory)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755",
                        "tmpfs", str(mnt)], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=30)


def metrics(port):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def big_event(c):
    env = c.env("event", msg_id=new_msg_id("fill"))
    env.event.title = "x" * 1000
    return env


def push_until_refused(c, acked):
    """Offer records until one is answered RETRY_LATER; remember the accepted ones.
    Returns the refused envelopes (the rest of that window is refused as well)."""
    refused = []
    sent = 0
    while sent < PUSH_MAX:
        envs = [big_event(c) for _ in range(64)]
        sent += len(envs)
        acks = c.push_all([(envelope_key(e), e.SerializeToString()) for e in envs],
                          window=64)
        by_id = {e.msg_id: e for e in envs}
        for ack in acks:
            if ack.status == ACCEPTED:
                acked[ack.msg_id] = ack.seq
            else:
                expect_ack(ack, RETRY_LATER, pb.REASON_STORE_FULL)
                refused.append(by_id[ack.msg_id])
        if refused:
            return refused
    pytest.fail(f"no RETRY_LATER after {sent} records")


def fill(path, append=False):
    """Write a ballast file until the file system is full; returns its size."""
    chunk = b"\0" * 65536
    size = 0
    with open(path, "ab" if append else "wb", buffering=0) as f:
        while True:
            try:
                size += f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        # Whatever single pages are left too.
        while True:
            try:
                size += f.write(b"\0" * 4096)
            except OSError:
                break
    return size


def wait_status(d, text, timeout=10):
    deadline = time.monotonic() + timeout
    while not any(text in m for m in d.notifications):
        assert time.monotonic() < deadline, f"no STATUS with {text!r}: {d.notifications}"
        d._read_notify(0.1)


def assert_all_present(state_dir, acked, lock):
    with Store(state_dir, lock=lock) as s:
        items = {it.seq: it for it in s.items()}
    for msg_id, seq in acked.items():
        it = items.get(seq)
        assert it is not None, f"acked {msg_id} seq {seq} is missing"
        assert pb.Envelope.FromString(it.envelope).msg_id == msg_id


def test_disk_full_answers_retry_later_and_recovers(tmpfs, coordd_factory):
    port = free_tcp_port()
    d = coordd_factory("d", state_dir=tmpfs / "state", overrides={
        "store": {"map_size": "1M", "map_size_max": "1G", "min_free_bytes": "2M"},
        "metrics": {"listen": f"127.0.0.1:{port}"}})
    acked = {}
    with d.council("c01") as c:
        for _ in range(20):
            ack = c.request(big_event(c))
            expect_ack(ack, ACCEPTED)
            acked[ack.msg_id] = ack.seq
        ballast = tmpfs / "ballast"
        assert fill(ballast) > 0
        refused = push_until_refused(c, acked)

        m = metrics(port)
        assert m[("coordd_store_full", ())] == 1
        assert m[("coordd_commit_failures_total", (("cause", "disk_full"),))] >= 1
        assert m[("coordd_commit_failures_total", (("cause", "map_full"),))] == 0
        assert m[("coordd_disk_low", ())] == 1
        assert m[("coordd_disk_free_bytes", ())] < 2 * 2**20
        wait_status(d, "STATUS=Refusing writes (disk full)")

        # A single record may still fit where the failed batch did not: offer single
        # records until three in a row are refused (the ballast takes any space back).
        fill(ballast, append=True)
        streak = 0
        for _ in range(200):
            ack = c.request(big_event(c))
            if ack.status == ACCEPTED:
                acked[ack.msg_id] = ack.seq
                streak = 0
            else:
                expect_ack(ack, RETRY_LATER, pb.REASON_STORE_FULL)
                streak += 1
                if streak == 3:
                    break
        assert streak == 3, "single records kept being accepted on a full disk"
        # More refusals in the same episode are counted but not logged again.
        logged = d.stderr().count("Disk full under")
        failed = metrics(port)[("coordd_commit_failures_total", (("cause", "disk_full"),))]
        for env in refused[:3]:
            expect_ack(c.request(env), RETRY_LATER, pb.REASON_STORE_FULL)
        assert d.stderr().count("Disk full under") == logged
        assert metrics(port)[("coordd_commit_failures_total",
                              (("cause", "disk_full"),))] == failed + 3
        log = d.stderr()
        assert logged == log.count("Store writable again") + 1, log
        assert log.count("Low disk space") == 1, log

        # No corruption, read beside the running broker.
        verify(d.state_dir)

        # Space returns: the same broker accepts the refused records, no restart.
        ballast.unlink()
        for env in refused:
            ack = c.request(env)
            expect_ack(ack, ACCEPTED)
            acked[ack.msg_id] = ack.seq
        m = metrics(port)
        assert m[("coordd_store_full", ())] == 0
        assert m[("coordd_disk_low", ())] == 0
        wait_status(d, "STATUS=Serving 11 councils")
    log = d.stderr()
    assert "Store writable again" in log
    assert "back above min_free_bytes" in log
    assert_all_present(d.state_dir, acked, lock=True)
    assert d.stop() == 0
    verify(d.state_dir)
    assert_all_present(d.state_dir, acked, lock=False)


def test_map_at_its_maximum_answers_retry_later(coordd_factory):
    port = free_tcp_port()
    d = coordd_factory("d", overrides={
        "store": {"map_size": "1M", "map_size_max": "1M"},
        "metrics": {"listen": f"127.0.0.1:{port}"}})
    acked = {}
    with d.council("c01") as c:
        refused = push_until_refused(c, acked)
        assert acked, "nothing fitted in the map"
        m = metrics(port)
        assert m[("coordd_store_full", ())] == 1
        assert m[("coordd_commit_failures_total", (("cause", "map_full"),))] >= 1
        assert m[("coordd_commit_failures_total", (("cause", "disk_full"),))] == 0
        wait_status(d, "STATUS=Refusing writes (store map full)")
        # Logged once per episode, not per failed batch. A window's later, smaller batch
        # may still fit after a larger one failed: that ends the episode ("writable
        # again") and the next failure starts another.
        log = d.stderr()
        episodes = log.count("Store full: its map reached")
        assert 1 <= episodes == 1 + log.count("Store writable again"), log
        # The trouble stays the status: a refresh (every 5 s) with a changed summary (one
        # more council connection) repeats it instead of going back to "Serving: ...".
        with d.council("c02"):
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                d._read_notify(0.1)
        statuses = [m for m in d.notifications if "STATUS=" in m]
        assert "STATUS=Refusing writes (store map full)" in statuses[-1], statuses[-3:]
        verify(d.state_dir)

    # Raising the limit takes a restart; then the refused records go in.
    assert d.stop() == 0
    verify(d.state_dir)
    d.config["store"]["map_size_max"] = "64M"
    from coordlib import render_config
    d.config_path.write_text(render_config(d.config))
    d.start()
    with d.council("c01") as c:
        for env in refused:
            ack = c.request(env)
            expect_ack(ack, ACCEPTED)
            acked[ack.msg_id] = ack.seq
    assert_all_present(d.state_dir, acked, lock=True)
