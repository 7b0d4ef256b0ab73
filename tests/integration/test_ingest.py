"""Ingest: valid records are acked ACCEPTED with global, gap-free seqs and stored byte for
byte; many councils pipelining at once all get through."""

import os
import threading
import time

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, BODIES, COUNCIL_IDS, DAY_MS, DUPLICATE, REJECTED,
                      TIME_MIN_MS, Council, check_store_invariants, day_ms, expect_ack,
                      free_tcp_port, gen_envelope, gen_event, new_msg_id, now_ms)


def test_each_record_kind_is_accepted(coordd, council):
    seqs = []
    for body in BODIES + ["event"]:
        env = council.env(body)
        ack = council.request(env)
        expect_ack(ack, ACCEPTED, msg_id=env.msg_id, revision=1)
        seqs.append(ack.seq)
    assert len(set(seqs)) == len(seqs), f"seqs repeat: {seqs}"
    assert seqs == sorted(seqs), f"seqs not increasing: {seqs}"


@pytest.mark.local_only
def test_accepted_records_are_stored_byte_for_byte(coordd, council):
    before = now_ms()
    sent = {}
    for i, body in enumerate(BODIES):
        env = gen_envelope(body, council=f"c0{i + 1}")
        data = council.send(env)
        ack = council.recv_ack()
        expect_ack(ack, ACCEPTED, msg_id=env.msg_id, revision=1)
        sent[ack.seq] = (env, data)
    after = now_ms()
    assert sorted(sent) == [1, 2, 3, 4, 5], "seqs of a fresh store start at 1 without gaps"
    with coordd.store() as store:
        assert store.schema_version() == 4
        assert store.item_count() == 5
        for seq, (env, data) in sent.items():
            item = store.item(seq)
            assert item is not None, f"seq {seq} acked but not stored"
            assert item.envelope == data, f"seq {seq}: stored envelope differs from the bytes sent"
            assert item.council == env.council
            assert before - 1000 <= item.received_at <= after + 1000, (
                f"received_at {item.received_at} outside [{before}, {after}]")
            entry = store.index(env.council, env.msg_id)
            assert entry is not None, f"{env.council}/{env.msg_id} not in the index"
            assert (entry.seq, entry.revision, entry.retracted) == (seq, 1, False), entry
        check_store_invariants(store)


# Valid variants near the limits: each must be ACCEPTED.
VALID_VARIANTS = {
    "created_at_2000_01_01": dict(created_at=TIME_MIN_MS),
    "created_at_now_plus_23h": dict(created_at=now_ms() + DAY_MS - 3_600_000),
    "date_in_300_days": dict(date=day_ms(300)),
    "title_1024_ascii_bytes": dict(title="t" * 1024),
    "title_1024_bytes_of_2_byte_chars": dict(title="é" * 512),
    "title_non_latin": dict(title="Հանրահավաք Փարիզում 🕯"),
    "city_256_bytes": dict(city="c" * 256),
    "msg_id_128_bytes": dict(msg_id=("m" + os.urandom(40).hex() + "x" * 128)[:128]),
    "msg_id_printable_punctuation": dict(msg_id="id:" + new_msg_id() + "/~!#$%&'()*+,.;<=>?@[]^_`{|}"),
    "languages_16": dict(languages=["en", "fr", "de", "hy", "ru", "es", "it", "pt",
                                    "nl", "el", "ar", "fa", "tr", "ka", "pl", "sv"]),
    "language_tags_with_subtags": dict(languages=["en-GB", "sr-Latn-RS", "hy-AM"]),
    "language_three_letter": dict(languages=["hye", "hyw"]),
    "language_upper_case": dict(languages=["HY", "EN-gb"]),
    "no_optional_fields": dict(city="", organiser="", participants=0, languages=[]),
    "country_AM": dict(country="AM"),
    "revision_large": dict(revision=4_000_000_000),
    "council_c11": dict(council="c11"),
}


@pytest.mark.parametrize("name", sorted(VALID_VARIANTS))
def test_valid_variant_is_accepted(coordd, council, name):
    env = gen_event(**VALID_VARIANTS[name])
    expect_ack(council.request(env), ACCEPTED, msg_id=env.msg_id, revision=env.revision)


@pytest.mark.local_only
def test_rejected_messages_take_no_seq(coordd, council):
    """Seqs are global and gap-free over accepted items only, whatever is rejected in
    between, across councils and kinds."""
    msgs = []
    for i in range(60):
        body = BODIES[i % len(BODIES)]
        msgs.append((True, gen_envelope(body, council=COUNCIL_IDS[i % 11])))
        if i % 3 == 0:
            msgs.append((False, gen_envelope(body, council="c01", revision=0)))
        if i % 4 == 0:
            msgs.append((False, b"\x07garbage"))
    for _, m in msgs:
        council.send(m)
    acks = council.collect(len(msgs))
    accepted = [a for a in acks if a.status == ACCEPTED]
    rejected = [a for a in acks if a.status == REJECTED]
    assert len(accepted) == 60 and len(rejected) == len(msgs) - 60, (
        f"{len(accepted)} accepted, {len(rejected)} rejected of {len(msgs)}")
    assert sorted(a.seq for a in accepted) == list(range(1, 61))
    with coordd.store() as store:
        assert store.item_count() == 60
        check_store_invariants(store)


@pytest.mark.local_only
def test_tcp_endpoint(coordd_factory):
    port = free_tcp_port()
    d = coordd_factory("tcp", endpoint=f"tcp://127.0.0.1:{port}")
    with d.council("c03") as c:
        env = c.env("letter")
        expect_ack(c.request(env), ACCEPTED, msg_id=env.msg_id, seq=1)


N_MESSAGES = 10_000
WINDOW = 256


def _plan(n_messages, councils):
    """Split n_messages over the councils, mixing record kinds; pre-serialized so that
    the clock measures the broker, not python-protobuf."""
    plans = {c: [] for c in councils}
    for i in range(n_messages):
        c = councils[i % len(councils)]
        env = gen_envelope(BODIES[i % len(BODIES)], council=c)
        plans[c].append(((env.msg_id, env.revision), env.SerializeToString()))
    return plans


def _push_concurrently(endpoint, plans, window=WINDOW):
    """One thread and one DEALER per council. Returns ({council: Council}, seconds,
    {council: exception})."""
    clients = {c: Council(endpoint, council=c, timeout=60) for c in plans}
    errors = {}
    barrier = threading.Barrier(len(plans) + 1)

    def run(c):
        try:
            barrier.wait(30)
            clients[c].push_all(plans[c], window=window, idle_timeout=60)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors[c] = e

    threads = [threading.Thread(target=run, args=(c,), name=f"council-{c}") for c in plans]
    for t in threads:
        t.start()
    barrier.wait(30)
    t0 = time.monotonic()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), f"{t.name} still pushing after 300 s"
    return clients, time.monotonic() - t0, errors


def _push_expect_acks(endpoint, plans, status, seqs=None):
    """Push every council's plan at once (_push_concurrently) and expect exactly one ack of
    `status` for each record, with the seq given in seqs[(council, msg_id)] when seqs is
    given. Returns ({(council, msg_id): acked seq}, seconds)."""
    clients, seconds, errors = _push_concurrently(endpoint, plans)
    acked = {}
    try:
        assert not errors, f"client errors: {errors}"
        for c, client in clients.items():
            assert client.outstanding == 0
            for key, _ in plans[c]:
                acks = client.acks_for(key)
                assert len(acks) == 1, f"{c} {key}: {len(acks)} acks"
                want_seq = seqs[(c, key[0])] if seqs is not None else None
                acked[(c, key[0])] = expect_ack(acks[0], status, seq=want_seq).seq
    finally:
        for client in clients.values():
            client.close()
    return acked, seconds


def record_throughput(line):
    print("\n" + line)
    path = os.environ.get("COORDD_IT_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.mark.local_only
def test_10000_pipelined_from_11_councils(coordd, record_property):
    plans = _plan(N_MESSAGES, COUNCIL_IDS)
    seq_of, seconds = _push_expect_acks(coordd.endpoint, plans, ACCEPTED)
    rate = N_MESSAGES / seconds
    line = (f"coordd ingest: {N_MESSAGES} messages from {len(plans)} councils, window {WINDOW}, "
            f"sync=full: {seconds:.2f} s, {rate:.0f} msgs/s")
    record_throughput(line)
    record_property("msgs_per_second", round(rate))
    assert sorted(seq_of.values()) == list(range(1, N_MESSAGES + 1)), "seqs not unique 1..N"

    def check_store():
        with coordd.store() as store:
            assert store.item_count() == N_MESSAGES
            by_seq, _, index = check_store_invariants(store)
            for c in plans:
                for (msg_id, _), data in plans[c]:
                    seq = seq_of[(c, msg_id)]
                    assert by_seq[seq][0].envelope == data, f"seq {seq}: envelope differs"
                    assert index[(c, msg_id)].seq == seq

    check_store()
    coordd.restart()
    check_store()
    # Everything again, after the restart: all DUPLICATE with the original seqs.
    _push_expect_acks(coordd.endpoint, plans, DUPLICATE, seqs=seq_of)
    with coordd.store() as store:
        assert store.item_count() == N_MESSAGES


def test_ack_echoes_msg_id_and_revision(coordd, council):
    envs = [council.env(body, revision=r) for r, body in enumerate(BODIES, start=1)]
    for env in envs:
        council.send(env)
    council.collect(len(envs))
    for env in envs:
        (ack,) = council.acks_for((env.msg_id, env.revision))
        expect_ack(ack, ACCEPTED, msg_id=env.msg_id, revision=env.revision)


def test_message_without_optional_body_fields_of_each_kind(coordd, council):
    minimal = {
        "event": dict(city="", organiser="", participants=0, languages=[]),
        "letter": dict(subject="", channel=pb.LETTER_CHANNEL_UNSPECIFIED),
        "statement": dict(title=""),
        "petition": dict(signatures=0, title="", language=""),
        "media": dict(local_sources=0, title="", url=""),
    }
    for body, fields in minimal.items():
        env = council.env(body, **fields)
        expect_ack(council.request(env), ACCEPTED, msg_id=env.msg_id)


def test_small_map_grows_while_11_councils_push(coordd_factory):
    """A 1 MiB map grows (several doublings) to hold 8,000 records pushed by 11 councils at
    once, while the digest folds read beside the writer: every record is ACCEPTED (none
    refused for a full map), the map ends larger than what is in use, and the store checks
    out after a restart."""
    d = coordd_factory("grow", overrides={"store": {"map_size": "1M", "map_size_max": "1G"}})
    plans = _plan(8000, COUNCIL_IDS)
    _push_expect_acks(d.endpoint, plans, ACCEPTED)
    with d.query() as q:
        st = q.stats()
    assert st.last_seq == 8000
    assert 4 << 20 <= st.map_size <= 1 << 30
    assert 0 < st.store_bytes < st.map_size
    assert "Store full" not in d.stderr()
    d.restart()
    with d.store() as store:
        assert store.item_count() == 8000
        check_store_invariants(store)
