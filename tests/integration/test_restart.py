"""Restarts: what was acked survives a clean stop and a kill -9, byte for byte, never
twice; a clean stop acks everything it read; resending after a restart gives DUPLICATE."""

import signal
import threading
import time

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, BODIES, COUNCIL_IDS, DUPLICATE, Council,
                      check_store_invariants, expect_ack, gen_envelope)

pytestmark = pytest.mark.local_only


def test_store_and_dedup_survive_clean_restart(coordd, council):
    envs = [council.env(BODIES[i % 5], council=COUNCIL_IDS[i % 11]) for i in range(100)]
    sent = {}
    for env in envs:
        sent[(env.council, env.msg_id)] = council.send(env)
    council.collect(len(envs))
    seq_of = {}
    for env in envs:
        (ack,) = council.acks_for((env.msg_id, 1))
        seq_of[(env.council, env.msg_id)] = expect_ack(ack, ACCEPTED).seq
    assert sorted(seq_of.values()) == list(range(1, 101))
    council.close()

    assert coordd.stop() == 0, coordd.stderr()
    with coordd.store(lock=False) as store:
        by_seq, _, _ = check_store_invariants(store)
        assert len(by_seq) == 100
        assert store.schema_version() == 4
    coordd.start()

    with coordd.council("c05") as c:
        for env in envs:
            c.send(env)
        c.collect(len(envs))
        for env in envs:
            (ack,) = c.acks_for((env.msg_id, 1))
            expect_ack(ack, DUPLICATE, seq=seq_of[(env.council, env.msg_id)])
        # Seqs go on where they stopped; a correction after the restart works.
        new = c.env("event")
        expect_ack(c.request(new), ACCEPTED, seq=101)
        first = envs[0]
        fix = gen_envelope(BODIES[0], council=first.council, msg_id=first.msg_id, revision=2)
        expect_ack(c.request(fix), ACCEPTED, revision=2, seq=102)
        retract = gen_envelope("retraction", council=envs[1].council, msg_id=envs[1].msg_id,
                               revision=2)
        expect_ack(c.request(retract), ACCEPTED, seq=103)
    with coordd.store() as store:
        by_seq, _, index = check_store_invariants(store)
        assert len(by_seq) == 103
        for key, data in sent.items():
            assert by_seq[seq_of[key]][0].envelope == data
        assert index[(first.council, first.msg_id)].revision == 2
        assert index[(envs[1].council, envs[1].msg_id)].retracted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_acks_everything_it_read(coordd, sig):
    """On SIGTERM/SIGINT the daemon stops reading, commits and acks what it has, and exits
    0: afterwards the store holds exactly the records that were acked ACCEPTED."""
    n = 20000
    envs = [gen_envelope(BODIES[i % 5], council=COUNCIL_IDS[i % 11]) for i in range(n)]
    with coordd.council("c01", timeout=30) as c:
        for env in envs[:2000]:
            c.send(env)
        c.recv_ack()  # the daemon is busy with the burst: signal it and keep sending
        coordd.proc.send_signal(sig)
        for env in envs[2000:]:
            c.send(env)
        status = coordd.wait_exit()
        assert status == 0, f"exit status {status} on {sig.name}; stderr:\n{coordd.stderr()}"
        c.drain(1.0)  # the daemon is gone: take the Acks already on their way
        acked = {}
        for ack in c.arrivals:
            assert ack.status in (ACCEPTED, pb.ACK_STATUS_RETRY_LATER), ack
            if ack.status == ACCEPTED:
                acked[ack.msg_id] = ack.seq
            else:
                # OVERLOADED: a burst of 20,000 from one connection goes beyond
                # [ingest] max_inflight_per_council; refused, nothing stored either way.
                assert ack.reason in (pb.REASON_SHUTTING_DOWN, pb.REASON_OVERLOADED), ack
        assert len(c.arrivals) == len({a.msg_id for a in c.arrivals}), "two Acks for one message"
    assert len(acked) < n, "the daemon read everything sent after the signal: did it stop reading?"
    print(f"\n{sig.name}: {len(acked)} of {n} acked ACCEPTED before the exit")
    with coordd.store(lock=False) as store:
        by_seq, stored, _ = check_store_invariants(store)
        stored_ids = {msg_id: seq for (_, msg_id, _), seq in stored.items()}
        unacked = set(stored_ids) - set(acked)
        assert not unacked, (f"{len(unacked)} records stored but never acked, e.g. "
                             f"{sorted(unacked)[:3]}")
        assert stored_ids == acked, "acked seqs differ from the stored ones"


def test_kill9_while_11_councils_push(coordd):
    """kill -9 in the middle of a pipelined load from 11 councils; restart; every acked
    message is stored byte for byte, nothing twice; resending the rest only gives
    ACCEPTED or DUPLICATE and leaves one copy of each."""
    per_council = 2000
    kill_after = 3000
    plans = {c: [] for c in COUNCIL_IDS}
    for c in COUNCIL_IDS:
        for i in range(per_council):
            env = gen_envelope(BODIES[i % 5], council=c)
            plans[c].append(((env.msg_id, 1), env.SerializeToString()))
    total = per_council * len(COUNCIL_IDS)

    progress = threading.Condition()
    acked = [0]

    def on_ack(_ack):
        with progress:
            acked[0] += 1
            if acked[0] >= kill_after:
                progress.notify_all()

    stop = threading.Event()
    clients = {c: Council(coordd.endpoint, council=c, timeout=60) for c in COUNCIL_IDS}
    errors = {}

    def run(c):
        try:
            clients[c].push_all(plans[c], window=256, idle_timeout=60, stop=stop, on_ack=on_ack)
        except BaseException as e:  # noqa: BLE001
            errors[c] = e
            with progress:
                progress.notify_all()

    threads = [threading.Thread(target=run, args=(c,)) for c in COUNCIL_IDS]
    for t in threads:
        t.start()
    try:
        with progress:
            reached = progress.wait_for(lambda: acked[0] >= kill_after or errors, timeout=120)
        assert not errors, errors
        assert reached, f"only {acked[0]} acks within 120 s"
        coordd.kill9()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a client did not stop"
    assert not errors, errors
    for client in clients.values():
        client.close()  # linger 0: nothing queued for the dead daemon reaches the next one

    # Everything each client got an Ack for.
    acks = {}
    for c, client in clients.items():
        for ack in client.arrivals:
            expect_ack(ack, ACCEPTED)
            key = (c, ack.msg_id)
            assert key not in acks, f"two Acks for {key}"
            acks[key] = ack.seq
    assert kill_after <= len(acks) < total, (
        f"{len(acks)} of {total} acked: the kill did not land mid-stream")
    sent_bytes = {(c, key[0]): data for c in plans for key, data in plans[c]}
    print(f"\nkill -9 after {len(acks)} of {total} acks")

    with coordd.store(lock=False) as store:
        by_seq, stored, _ = check_store_invariants(store)
        for key, seq in acks.items():
            assert seq in by_seq, f"{key} acked with seq {seq} but not stored after kill -9"
            item, env = by_seq[seq]
            assert (env.council, env.msg_id) == key, f"seq {seq} holds another record"
            assert item.envelope == sent_bytes[key], f"{key}: stored bytes differ from sent"
        stored_before = {(c, m): seq for (c, m, _), seq in stored.items()}
    assert len(stored_before) >= len(acks)

    coordd.start()
    unacked = {c: [(k, d) for k, d in plans[c] if (c, k[0]) not in acks] for c in plans}
    clients = {c: Council(coordd.endpoint, council=c, timeout=60) for c in COUNCIL_IDS}
    try:
        for c, client in clients.items():
            client.push_all(unacked[c], window=256, idle_timeout=60)
        for c, client in clients.items():
            for key, _ in unacked[c]:
                (ack,) = client.acks_for(key)
                if (c, key[0]) in stored_before:
                    expect_ack(ack, DUPLICATE, seq=stored_before[(c, key[0])])
                else:
                    expect_ack(ack, ACCEPTED)
    finally:
        for client in clients.values():
            client.close()

    with coordd.store() as store:
        by_seq, stored, _ = check_store_invariants(store)
        assert len(by_seq) == total, f"{len(by_seq)} items for {total} messages"
        for (c, msg_id, revision), seq in stored.items():
            assert revision == 1
            assert by_seq[seq][0].envelope == sent_bytes[(c, msg_id)]


@pytest.mark.local_only
def test_sighup_does_not_stop_the_broker(coordd, council):
    """SIGHUP reloads (test_reload.py covers what changes); it never stops the broker or
    drops a council's connection."""
    expect_ack(council.request(council.env("event")), ACCEPTED)
    # Returns once READY=1 follows RELOADING=1 on the notify socket: the reload is done.
    coordd.reload()
    for _ in range(3):
        expect_ack(council.request(council.env("event")), ACCEPTED)
    assert coordd.proc.poll() is None
    assert "Received SIGHUP" in coordd.stderr()
