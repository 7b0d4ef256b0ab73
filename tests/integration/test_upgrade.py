"""Store schema 2 -> 3 in place: a store whose "digest" table holds protobuf Aggregates (the
format of schema 2), made here with python3-lmdb from a store the daemon wrote, is refused by
`coordctl verify` with a message naming the upgrade; coordd upgrades it at start (the
aggregates rebuilt from the items, logged) and then serves the same digests, which
`coordctl verify` (a recount) finds intact."""
import struct

import pytest

import compactfmt
import coord_pb2 as pb
from coordlib import ACCEPTED, Store, expect_ack, new_msg_id
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


def make_schema_2(state_dir):
    """With coordd stopped: every stored aggregate back to a protobuf Aggregate, and the
    schema version to 2. Returns how many aggregates were rewritten."""
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


def digests(d):
    with d.query() as q:
        return {s: [line.SerializeToString() for line in q.digest(*s).lines]
                for s in SCOPES}


def test_schema_2_store_is_upgraded_at_start(coordd_factory):
    d = coordd_factory("d")
    for council in ("c01", "c02", "c03"):
        with d.council(council) as c:
            ids = [new_msg_id("u") for _ in range(8)]
            for i, m in enumerate(ids):
                body = ("event", "petition", "letter", "media")[i % 4]
                expect_ack(c.request(c.env(body, msg_id=m)), ACCEPTED)
            expect_ack(c.request(c.env("event", msg_id=ids[0], revision=2)), ACCEPTED)
            expect_ack(c.request(c.env("retraction", msg_id=ids[1], revision=2)), ACCEPTED)
    before = digests(d)
    assert sum(1 for lines in before.values() if lines) >= 3
    assert d.stop() == 0

    assert make_schema_2(d.state_dir) > 0
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == 2

    # verify (read-only) does not upgrade: it names what to do.
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "schema 2" in p.stdout and "start coordd once to upgrade it" in p.stdout
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == 2

    d.start()
    err = d.stderr()
    assert "Upgrading the store" in err and "Upgraded the store" in err, err
    assert digests(d) == before
    # Writing goes on in the new format.
    with d.council("c01") as c:
        expect_ack(c.request(c.env("event", msg_id=new_msg_id("u"))), ACCEPTED)
    assert d.stop() == 0
    with Store(d.state_dir, lock=False) as s:
        assert s.schema_version() == 3
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 0 and "intact" in p.stdout, p.stdout + p.stderr

    # A second start has nothing to upgrade.
    d.start()
    assert "Upgrading the store" not in d.stderr()
    assert d.stop() == 0
