"""coordctl backup, verify and repair on a state directory, and the documented restore
(docs/OPERATIONS.md "Back up and restore"): a hot backup taken while 11 councils push holds
every record acknowledged before it began, verifies, and serves the same history and digests
when a daemon starts on it; verify names deliberate damage, repair mends it."""
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import coord_pb2 as pb
from compactfmt import decode_aggregate, encode_aggregate
from coordlib import (ACCEPTED, COUNCIL_IDS, Store, envelope_key, expect_ack, gen_envelope,
                      index_key, new_msg_id)

pytestmark = pytest.mark.local_only

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PUSH_SECONDS_MAX = 60
BACKUP_AFTER_ACKS = 30  # per council, before the backup starts


def coordctl_bin():
    path = os.environ.get("COORDCTL_BIN") or str(REPO / "build" / "clients" / "coordctl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"coordctl binary {path!r} not found (set COORDCTL_BIN)")
    return path


def coordctl(*args, timeout=120):
    return subprocess.run([coordctl_bin(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def coordctl_json(*args):
    p = coordctl(*args, "--json")
    assert p.stdout.count("\n") == 1, f"one JSON object expected: {p.stdout!r} {p.stderr!r}"
    return p.returncode, json.loads(p.stdout)


def live_records(items):
    """{(council, msg_id): Envelope} of the live records, from Items alone."""
    latest = {}
    for it in items:
        env = pb.Envelope.FromString(it.envelope)
        latest[(it.council, env.msg_id)] = env
    return {k: e for k, e in latest.items() if e.WhichOneof("body") != "retraction"}


def digest_total(digest):
    return sum(line.count for line in digest.lines)


class Pusher(threading.Thread):
    """One council pushing batches of records until told to stop; remembers each ACCEPTED
    (msg_id, revision) -> seq in the shared `acked` dict."""

    def __init__(self, daemon, council, acked, lock, stop):
        super().__init__(daemon=True)
        self.d, self.council, self.acked, self.lock, self.stop = (daemon, council, acked,
                                                                 lock, stop)
        self.error = None
        self.count = 0

    def run(self):
        try:
            with self.d.council(self.council) as c:
                deadline = time.monotonic() + PUSH_SECONDS_MAX
                while not self.stop.is_set() and time.monotonic() < deadline:
                    envs = [c.env("event", msg_id=new_msg_id(self.council))
                            for _ in range(20)]
                    items = [(envelope_key(e), e.SerializeToString()) for e in envs]
                    for ack in c.push_all(items, window=20):
                        expect_ack(ack, ACCEPTED)
                        with self.lock:
                            self.acked[(self.council, ack.msg_id, ack.revision)] = ack.seq
                        self.count += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_hot_backup_while_11_councils_push_then_restore(coordd_factory, tmp_path):
    d = coordd_factory("live")
    acked, lock, stop = {}, threading.Lock(), threading.Event()
    pushers = [Pusher(d, cid, acked, lock, stop) for cid in COUNCIL_IDS]
    assert len(pushers) == 11
    for p in pushers:
        p.start()
    try:
        deadline = time.monotonic() + 30
        while min(p.count for p in pushers) < BACKUP_AFTER_ACKS:
            assert time.monotonic() < deadline, [p.count for p in pushers]
            assert all(p.error is None for p in pushers), [p.error for p in pushers]
            time.sleep(0.05)
        with lock:
            before = dict(acked)
        dest = tmp_path / "backup"
        status, summary = coordctl_json("backup", d.state_dir, dest)
        # The councils are still pushing: the backup really was hot.
        mid = min(p.count for p in pushers)
    finally:
        stop.set()
        for p in pushers:
            p.join(30)
    assert all(p.error is None for p in pushers), [p.error for p in pushers]
    assert status == 0, summary
    assert summary["ok"] is True and summary["last_seq"] >= len(before)
    assert mid >= BACKUP_AFTER_ACKS
    with lock:
        assert len(acked) > len(before), "no push overlapped the backup"

    # Every record acknowledged before the backup began is in it, at its acked seq.
    with Store(dest, lock=False) as s:
        items = s.items()
    by_seq = {it.seq: it for it in items}
    for (council, msg_id, revision), seq in before.items():
        it = by_seq.get(seq)
        assert it is not None, f"acked {council}/{msg_id} seq {seq} is not in the backup"
        env = pb.Envelope.FromString(it.envelope)
        assert (it.council, env.msg_id, env.revision) == (council, msg_id, revision)
    assert summary["items"] == len(items)

    status, report = coordctl_json("verify", dest)
    assert status == 0 and report["ok"] is True and report["problem_count"] == 0, report
    assert report["items"] == len(items)

    # Restore as documented: coordd stopped, the backup becomes the state directory,
    # verify, start. The original daemon goes on elsewhere; the restored one is a new one.
    restored = coordd_factory("restored", start=False)
    shutil.rmtree(restored.state_dir)
    shutil.copytree(dest, restored.state_dir)
    assert coordctl("verify", restored.state_dir).returncode == 0
    restored.start()
    with restored.query() as q:
        history, _ = q.history_all()
        digest = q.digest()
        per_council = {cid: digest_total(q.digest(pb.SCOPE_KIND_COUNCIL, cid))
                       for cid in COUNCIL_IDS}
    assert [it.SerializeToString() for it in history] == [
        it.SerializeToString() for it in items]
    live = live_records(items)
    assert digest.last_seq == summary["last_seq"]
    assert digest_total(digest) == len(live)
    for cid in COUNCIL_IDS:
        assert per_council[cid] == sum(1 for (c, _m) in live if c == cid), cid
    # And it takes new records after the restored ones.
    with restored.council("c01") as c:
        ack = c.request(c.env("event"))
        expect_ack(ack, ACCEPTED)
        assert ack.seq == summary["last_seq"] + 1


def test_backup_refuses_a_used_destination_and_a_missing_store(coordd_factory, tmp_path):
    d = coordd_factory("d")
    with d.council("c01") as c:
        expect_ack(c.request(c.env("event")), ACCEPTED)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "something").write_text("keep me")
    p = coordctl("backup", d.state_dir, dest)
    assert p.returncode == 4, p
    assert "must not exist or be an empty directory" in p.stderr
    status, summary = coordctl_json("backup", d.state_dir, dest)
    assert status == 4 and summary["ok"] is False, summary
    assert "empty directory" in summary["error"] and summary["reason"] == "File exists", summary
    assert (dest / "something").read_text() == "keep me"
    assert not (dest / "data.mdb").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    p = coordctl("backup", d.state_dir, empty)
    assert p.returncode == 0, p.stderr
    assert "Backed up" in p.stdout and "up to seq 1" in p.stdout

    for cmd in ("verify", "repair"):
        p = coordctl(cmd, tmp_path / "nothing-here")
        assert p.returncode == 4 and "no coordd store here" in p.stderr, (cmd, p)
    p = coordctl("verify")
    assert p.returncode == 2 and "STATE_DIR" in p.stderr
    p = coordctl("backup", d.state_dir)
    assert p.returncode == 2 and "STATE_DIR DEST" in p.stderr


def add_to_first_count(value, n):
    """A stored aggregate (the compact format, compactfmt.py) with n added to its first
    line's count."""
    lines = decode_aggregate(value)
    category, kind, count, total, lists = lines[0]
    lines[0] = (category, kind, count + n, total, lists)
    return encode_aggregate(lines)


def damage(state_dir, council, msg_id):
    """With coordd stopped: add 1 to the first line of the whole-campaign aggregate of
    scope ALL, and delete the index entry of (council, msg_id). First check that the shared
    Python encoder (compactfmt.py) gives back every stored value byte for byte: it and
    daemon/digest.c write the same format."""
    import lmdb

    env = lmdb.open(str(state_dir), max_dbs=8, create=False)
    try:
        digest_db = env.open_db(b"digest", create=False)
        index_db = env.open_db(b"index", create=False)
        items_db = env.open_db(b"items", create=False)
        key = bytes([pb.SCOPE_KIND_ALL]) + b"\0" + b"\xff" * 8
        with env.begin(write=True) as txn:
            stored = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=digest_db)]
            assert len(stored) > 10, stored
            for k, v in stored:
                assert encode_aggregate(decode_aggregate(v)) == v, (k, v)
            value = bytes(txn.get(key, db=digest_db))
            txn.put(key, add_to_first_count(value, 1), db=digest_db)
            # The record's entry among the duplicates under its hash: the one whose item
            # is of the record.
            ikey = index_key(council, msg_id)
            cur = txn.cursor(db=index_db)
            assert cur.set_key(ikey)
            for v in cur.iternext_dup():
                item = pb.Item.FromString(bytes(txn.get(bytes(v)[:8], db=items_db)))
                if (item.council, pb.Envelope.FromString(item.envelope).msg_id) == (
                        council, msg_id):
                    assert txn.delete(ikey, bytes(v), db=index_db)
                    break
            else:
                raise AssertionError(f"no index entry for {council}/{msg_id}")
    finally:
        env.close()


def test_verify_names_damage_and_repair_mends_it(coordd_factory):
    d = coordd_factory("d")
    with d.council("c01") as c:
        ids = [new_msg_id("r") for _ in range(6)]
        for i, m in enumerate(ids):
            expect_ack(c.request(c.env("petition" if i % 2 else "event", msg_id=m)),
                       ACCEPTED)
        # A correction and a retraction, so that the recount must follow revisions.
        expect_ack(c.request(c.env("event", msg_id=ids[0], revision=2)), ACCEPTED)
        expect_ack(c.request(c.env("retraction", msg_id=ids[1], revision=2)), ACCEPTED)
    with d.council("c02") as c:
        expect_ack(c.request(c.env("media")), ACCEPTED)
    with d.query() as q:
        expected_total = digest_total(q.digest())
    assert expected_total == 6

    # Intact while running (verify reads beside the broker).
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "intact" in p.stdout

    # repair refuses while the broker holds the store.
    p = coordctl("repair", d.state_dir)
    assert p.returncode == 4 and "coordd is running on it" in p.stderr, p
    assert d.stop() == 0

    with Store(d.state_dir, lock=False) as s:
        seq_of_victim = s.index("c01", ids[2]).seq
    damage(d.state_dir, "c01", ids[2])

    p = coordctl("verify", d.state_dir)
    assert p.returncode == 1, p.stdout
    assert f"index: no entry for seq {seq_of_victim} (c01/{ids[2]})" in p.stdout
    assert (f"digest: all, the whole campaign: stored count {expected_total + 1}, "
            f"recount {expected_total}") in p.stdout
    assert "DAMAGED" in p.stdout
    status, report = coordctl_json("verify", d.state_dir)
    assert status == 1 and report["ok"] is False and report["problem_count"] >= 2
    assert any("index: no entry" in t for t in report["problems"])
    assert any(t.startswith("digest: all, the whole campaign") for t in report["problems"])

    status, rep = coordctl_json("repair", d.state_dir)
    assert status == 0, rep
    assert rep["ok"] is True and rep["index_entries_fixed"] == 1
    assert rep["aggregates_fixed"] >= 1 and rep["verify"]["problem_count"] == 0
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 0, p.stdout

    # A repaired store serves the right figures and keeps deduplicating.
    d.start()
    with d.query() as q:
        assert digest_total(q.digest()) == expected_total
    with d.council("c01") as c:
        ack = c.request(c.env("event", msg_id=ids[2]))
        assert ack.status == pb.ACK_STATUS_DUPLICATE and ack.seq == seq_of_victim
