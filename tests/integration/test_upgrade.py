"""Store upgrades in place at start, each made here with python3-lmdb from a store the daemon
wrote:
- schema 3 -> 4: the "index" table keyed by council "\\0" msg_id (schema 3) instead of a hash
  of them (schema 4, daemon/store.h); coordd rebuilds the index from the items;
- schema 2 -> 3 -> 4: also the "digest" table holding protobuf Aggregates (schema 2);
  coordd rebuilds the aggregates, then the index.
`coordctl verify` refuses an old store with a message naming the upgrade; after the
upgrade coordd recognises resends of every record (DUPLICATE with its latest seq), answers
history, status and digests as before, and `coordctl verify` finds the store intact."""
import struct

import pytest

import compactfmt
import coord_pb2 as pb
from coordlib import ACCEPTED, DUPLICATE, Store, expect_ack, new_msg_id
from test_backup import coordctl

pytestmark = pytest.mark.local_only

SCOPES = [(pb.SCOPE_KIND_ALL, ""), (pb.SCOPE_KIND_COUNCIL, "c01"),
          (pb.SCOPE_KIND_COUNCIL, "c02"), (pb.SCOPE_KIND_COUNTRY, "FR"),
          (pb.SCOPE_KIND_COUNTRY, "DE")]


def decode_aggregate(value):
    """A stored aggregate of schema 3 (the compact format, compactfmt.py) as an Aggregate."""
    agg = pb.Aggregate()
    for category, kind, count, total, lists in compactfmt.decode_aggregate(value):
        line = agg.lines.add(category=category, kind=kind, count=count, sum=total)
        for lst, codes in zip((line.countries, line.languages, line.councils), lists):
            for code, n in codes:
                lst.add(code=code, count=n)
    return agg


def make_schema_3(state_dir):
    """With coordd stopped: the index back to schema 3's table (no duplicates; key council
    "\\0" msg_id; the same 13-byte values), and the schema version to 3. Returns the
    entries, {(council, msg_id): IndexEntry}."""
    import lmdb

    with Store(state_dir, lock=False) as s:
        assert s.schema_version() == 4
        entries = s.index_entries()
    env = lmdb.open(str(state_dir), max_dbs=8, create=False)
    try:
        meta_db = env.open_db(b"meta", create=False)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"index", txn=txn, create=False), delete=True)
            index_db = env.open_db(b"index", txn=txn, dupsort=False)
            for (council, msg_id), e in entries.items():
                txn.put(council.encode() + b"\0" + msg_id.encode(),
                        struct.pack(">QIB", e.seq, e.revision, e.flags), db=index_db)
            txn.put(b"schema_version", struct.pack(">I", 3), db=meta_db)
    finally:
        env.close()
    return entries


def make_schema_2(state_dir):
    """With coordd stopped: every stored aggregate back to a protobuf Aggregate, and the
    schema version to 2 (make_schema_3() first for an index of that time). Returns how many
    aggregates were rewritten."""
    import lmdb

    env = lmdb.open(str(state_dir), max_dbs=8, create=False)
    n = 0
    try:
        digest_db = env.open_db(b"digest", create=False)
        meta_db = env.open_db(b"meta", create=False)
        with env.begin(write=True) as txn:
            for k, v in list(txn.cursor(db=digest_db)):
                agg = decode_aggregate(bytes(v))
                assert agg.lines
                txn.put(bytes(k), agg.SerializeToString(), db=digest_db)
                n += 1
            txn.put(b"schema_version", struct.pack(">I", 2), db=meta_db)
    finally:
        env.close()
    return n


def flat(entries):
    return {k: (e.seq, e.revision, e.flags) for k, e in entries.items()}


def write_campaign(d):
    """Records of three councils, with a correction and a retraction each. Returns every
    revision sent, [(council, envelope, seq)]."""
    sent = []
    for council in ("c01", "c02", "c03"):
        with d.council(council) as c:
            ids = [new_msg_id("u") for _ in range(8)]
            for i, m in enumerate(ids):
                body = ("event", "petition", "letter", "media")[i % 4]
                env = c.env(body, msg_id=m)
                sent.append((council, env, expect_ack(c.request(env), ACCEPTED).seq))
            for env in (c.env("event", msg_id=ids[0], revision=2),
                        c.env("retraction", msg_id=ids[1], revision=2)):
                sent.append((council, env, expect_ack(c.request(env), ACCEPTED).seq))
    return sent


def answers(d, entries):
    """What headquarters reads: digests, the whole history, and each record's status."""
    with d.query() as q:
        items, _ = q.history_all()
        status = {k: q.status(*k) for k in entries}
        return {
            "digests": {s: [line.SerializeToString() for line in q.digest(*s).lines]
                        for s in SCOPES},
            "history": [it.SerializeToString() for it in items],
            "status": {k: (st.found, st.seq, st.revision, st.retracted)
                       for k, st in status.items()},
        }


def check_resends(d, sent, entries):
    """Every revision sent, again: each is a DUPLICATE carrying its record's latest seq."""
    for council in ("c01", "c02", "c03"):
        with d.council(council) as c:
            for who, env, _ in sent:
                if who == council:
                    latest = entries[(council, env.msg_id)].seq
                    expect_ack(c.request(env), DUPLICATE, seq=latest)


@pytest.mark.parametrize("schema", [3, 2])
def test_old_store_is_upgraded_at_start(coordd_factory, schema):
    d = coordd_factory("d")
    sent = write_campaign(d)
    with Store(d.state_dir) as s:
        entries = s.index_entries()
    assert len(entries) == 24 and sum(e.retracted for e in entries.values()) == 3
    before = answers(d, entries)
    assert sum(1 for lines in before["digests"].values() if lines) >= 3
    assert d.stop() == 0

    assert flat(make_schema_3(d.state_dir)) == flat(entries)
    if schema == 2:
        assert make_schema_2(d.state_dir) > 0
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == schema

    # verify (read-only) does not upgrade: it names what to do.
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"schema {schema}" in p.stdout and "start coordd once to upgrade it" in p.stdout
    # Schema 3's aggregates are already current: only schema 2 names them.
    assert ("aggregates in the old format" in p.stdout) == (schema == 2), p.stdout
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == schema

    d.start()
    err = d.stderr()
    steps = "the index" if schema == 3 else "the aggregates and the index"
    assert f"from schema {schema} to 4: rebuilding {steps} from the items" in err, err
    assert "Upgraded the store" in err and "24 records indexed" in err, err
    assert ("aggregates rebuilt" in err) == (schema == 2), err
    assert answers(d, entries) == before
    check_resends(d, sent, entries)
    # Writing goes on in the new layout.
    with d.council("c01") as c:
        expect_ack(c.request(c.env("event", msg_id=new_msg_id("u"))), ACCEPTED)
    assert d.stop() == 0
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == 4
        after = s.index_entries()
    assert len(after) == 25 and flat(after).items() >= flat(entries).items()
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 0 and "intact" in p.stdout, p.stdout + p.stderr

    # A second start has nothing to upgrade.
    d.start()
    assert "Upgrading the store" not in d.stderr()
    assert d.stop() == 0


def test_schema_3_store_is_upgraded_by_repair(coordd_factory):
    d = coordd_factory("d")
    sent = write_campaign(d)
    with Store(d.state_dir) as s:
        entries = s.index_entries()
    assert d.stop() == 0
    make_schema_3(d.state_dir)

    p = coordctl("repair", d.state_dir)
    assert p.returncode == 0 and "verify after repair: intact" in p.stdout, p.stdout + p.stderr
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == 4
        assert flat(s.index_entries()) == flat(entries)
    d.start()
    assert "Upgrading the store" not in d.stderr()
    check_resends(d, sent, entries)
    assert d.stop() == 0
