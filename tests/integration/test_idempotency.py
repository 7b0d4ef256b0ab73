"""Idempotency: (council, msg_id, revision) is stored at most once. Duplicates and stale
revisions get DUPLICATE with the stored seq; higher revisions correct or retract; a later
revision restores a retracted record. Acks and the store are both checked (the store only
when the daemon is local)."""

import pytest

from coordlib import (ACCEPTED, DUPLICATE, REJECTED, check_store_invariants, expect_ack,
                      new_msg_id)
import coord_pb2 as pb


def store_state(coordd, council_id, msg_id):
    """(index entry, item count, invariants checked) or None for a remote daemon."""
    if not coordd.is_local:
        return None
    with coordd.store() as store:
        check_store_invariants(store)
        return store.index(council_id, msg_id), store.item_count()


def stored_envelope(coordd, seq):
    with coordd.store() as store:
        return store.item(seq).envelope


def test_duplicate_returns_original_seq(coordd, council):
    env = council.env("event")
    first = expect_ack(council.request(env), ACCEPTED, msg_id=env.msg_id, revision=1)
    before = store_state(coordd, "c01", env.msg_id)
    for _ in range(3):
        expect_ack(council.request(env), DUPLICATE, msg_id=env.msg_id, revision=1, seq=first.seq)
    if before is not None:
        entry, count = store_state(coordd, "c01", env.msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (first.seq, 1, False)
        assert count == before[1], "a duplicate was stored"


def test_duplicate_with_different_content_keeps_the_original(coordd, council):
    env = council.env("event", title="original title")
    data = council.send(env)
    first = expect_ack(council.recv_ack(), ACCEPTED)
    env.event.title = "same key, other content"
    expect_ack(council.request(env), DUPLICATE, seq=first.seq)
    if coordd.is_local:
        assert stored_envelope(coordd, first.seq) == data


def test_duplicate_in_one_pipelined_burst(coordd, council):
    env = council.env("media", title="first copy")
    data1 = council.send(env)
    env.media.title = "second copy, same key"
    council.send(env)
    a1, a2 = council.collect(2)
    expect_ack(a1, ACCEPTED, msg_id=env.msg_id, revision=1)
    expect_ack(a2, DUPLICATE, msg_id=env.msg_id, revision=1, seq=a1.seq)
    if coordd.is_local:
        assert stored_envelope(coordd, a1.seq) == data1, "the first copy must be the stored one"
        entry, _ = store_state(coordd, "c01", env.msg_id)
        assert (entry.seq, entry.revision) == (a1.seq, 1)


def test_same_msg_id_from_two_councils_is_two_records(coordd, council):
    msg_id = new_msg_id()
    a = expect_ack(council.request(council.env("event", council="c01", msg_id=msg_id)), ACCEPTED)
    b = expect_ack(council.request(council.env("event", council="c02", msg_id=msg_id)), ACCEPTED)
    assert a.seq != b.seq
    if coordd.is_local:
        with coordd.store() as store:
            assert store.index("c01", msg_id).seq == a.seq
            assert store.index("c02", msg_id).seq == b.seq


def test_correction_gets_new_seq(coordd, council):
    msg_id = new_msg_id()
    r1 = council.env("event", msg_id=msg_id, revision=1, participants=100)
    a1 = expect_ack(council.request(r1), ACCEPTED, revision=1)
    count0 = store_state(coordd, "c01", msg_id)
    r2 = council.env("event", msg_id=msg_id, revision=2, participants=150)
    data2 = r2.SerializeToString()
    a2 = expect_ack(council.request(r2), ACCEPTED, msg_id=msg_id, revision=2)
    assert a2.seq > a1.seq
    # Now both revisions are old news.
    expect_ack(council.request(r2), DUPLICATE, revision=2, seq=a2.seq)
    expect_ack(council.request(r1), DUPLICATE, revision=1, seq=a2.seq)
    if coordd.is_local:
        entry, count = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (a2.seq, 2, False)
        assert count == count0[1] + 1, "the correction is one more item"
        assert stored_envelope(coordd, a2.seq) == data2


def test_stale_revision_is_duplicate_of_latest(coordd, council):
    msg_id = new_msg_id()
    a1 = expect_ack(council.request(council.env("letter", msg_id=msg_id, revision=1)), ACCEPTED)
    a5 = expect_ack(council.request(council.env("letter", msg_id=msg_id, revision=5)), ACCEPTED)
    assert a5.seq > a1.seq
    count0 = store_state(coordd, "c01", msg_id)
    for rev in (4, 2, 1):
        expect_ack(council.request(council.env("letter", msg_id=msg_id, revision=rev)),
                   DUPLICATE, msg_id=msg_id, revision=rev, seq=a5.seq)
    if coordd.is_local:
        entry, count = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision) == (a5.seq, 5)
        assert count == count0[1], "a stale revision was stored"


def test_revisions_in_one_burst(coordd, council):
    msg_id = new_msg_id()
    sends = [(1, "event"), (2, "event"), (2, "event"), (1, "event"), (3, "retraction"),
             (4, "event")]
    for rev, body in sends:
        council.send(council.env(body, msg_id=msg_id, revision=rev))
    acks = council.collect(len(sends))
    by_rev = {}
    for ack in acks:
        by_rev.setdefault(ack.revision, []).append(ack)
    (a1,) = [a for a in by_rev[1] if a.status == ACCEPTED]
    (a2,) = [a for a in by_rev[2] if a.status == ACCEPTED]
    (dup2,) = [a for a in by_rev[2] if a.status != ACCEPTED]
    (stale1,) = [a for a in by_rev[1] if a is not a1]
    (a3,) = by_rev[3]
    (a4,) = by_rev[4]
    expect_ack(dup2, DUPLICATE, seq=a2.seq)
    # Revision 1 came again after revision 2: stale. Its seq is the latest stored revision
    # of the record (rev 2 when it was read; rev 3 or 4 if the broker looks at its batch).
    expect_ack(stale1, DUPLICATE)
    assert stale1.seq in (a2.seq, a3.seq, a4.seq), f"stale rev 1 got seq {stale1.seq}"
    expect_ack(a3, ACCEPTED)
    expect_ack(a4, ACCEPTED)
    assert a1.seq < a2.seq < a3.seq < a4.seq
    if coordd.is_local:
        entry, _ = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (a4.seq, 4, False)


def test_retraction_and_restore(coordd, council):
    msg_id = new_msg_id()
    a1 = expect_ack(council.request(council.env("event", msg_id=msg_id)), ACCEPTED)
    count0 = store_state(coordd, "c01", msg_id)

    retraction = council.env("retraction", msg_id=msg_id, revision=2, reason="wrong city")
    a2 = expect_ack(council.request(retraction), ACCEPTED, msg_id=msg_id, revision=2)
    assert a2.seq > a1.seq
    if coordd.is_local:
        entry, count = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (a2.seq, 2, True)
        assert count == count0[1] + 1
        assert stored_envelope(coordd, a2.seq) == retraction.SerializeToString()

    # The same retraction again, and the original again: DUPLICATE of the retraction.
    expect_ack(council.request(retraction), DUPLICATE, revision=2, seq=a2.seq)
    expect_ack(council.request(council.env("event", msg_id=msg_id)), DUPLICATE, seq=a2.seq)

    restore = council.env("event", msg_id=msg_id, revision=3, city="Lyon")
    a3 = expect_ack(council.request(restore), ACCEPTED, msg_id=msg_id, revision=3)
    assert a3.seq > a2.seq
    if coordd.is_local:
        entry, count = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (a3.seq, 3, False)
        assert count == count0[1] + 2

    # Retract again, with a revision that skips numbers.
    a7 = expect_ack(council.request(council.env("retraction", msg_id=msg_id, revision=7)),
                    ACCEPTED)
    if coordd.is_local:
        entry, _ = store_state(coordd, "c01", msg_id)
        assert (entry.seq, entry.revision, entry.retracted) == (a7.seq, 7, True)


@pytest.mark.parametrize("revision", [1, 2])
def test_retraction_of_unknown_record_is_rejected(coordd, council, revision):
    count0 = store_state(coordd, "c01", "x")
    msg_id = new_msg_id("never-stored")
    ack = council.request(council.env("retraction", msg_id=msg_id, revision=revision))
    expect_ack(ack, REJECTED, pb.REASON_UNKNOWN_RECORD, msg_id=msg_id, revision=revision)
    if coordd.is_local:
        entry, count = store_state(coordd, "c01", msg_id)
        assert entry is None, f"a rejected retraction is in the index: {entry}"
        assert count == count0[1]
    # A record under that id can still be created afterwards.
    expect_ack(council.request(council.env("event", msg_id=msg_id, revision=revision + 1)),
               ACCEPTED)


def test_retraction_of_record_from_another_council_is_rejected(coordd, council):
    msg_id = new_msg_id()
    expect_ack(council.request(council.env("event", council="c02", msg_id=msg_id)), ACCEPTED)
    ack = council.request(council.env("retraction", council="c03", msg_id=msg_id, revision=2))
    expect_ack(ack, REJECTED, pb.REASON_UNKNOWN_RECORD)
    if coordd.is_local:
        entry, _ = store_state(coordd, "c02", msg_id)
        assert not entry.retracted


@pytest.mark.local_only
def test_seqs_stay_gap_free_through_duplicates(coordd, council):
    msg_ids = [new_msg_id() for _ in range(20)]
    for round_ in range(3):
        for m in msg_ids:
            council.send(council.env("statement", msg_id=m))
    acks = council.collect(60)
    accepted = sorted(a.seq for a in acks if a.status == ACCEPTED)
    assert accepted == list(range(1, 21))
    assert sum(a.status == DUPLICATE for a in acks) == 40
    with coordd.store() as store:
        assert store.item_count() == 20
        check_store_invariants(store)
