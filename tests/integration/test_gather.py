"""Gathering (docs/ARCHITECTURE.md, "Gathering"): when a commit returns and the next batch is
short of the senders just acked, the writer waits briefly for them. Senders with one
message in flight each must all be answered, every record stored once, and the stop line
must count the waits (batch_waits=filled/all)."""

import re
import threading

import pytest

from coordlib import ACCEPTED, expect_ack

pytestmark = pytest.mark.local_only

SENDERS = 8
PER_SENDER = 30


def one_in_flight(coordd, council_id, results, errors):
    try:
        with coordd.council(council_id) as c:
            for _ in range(PER_SENDER):
                env = c.env("event")
                ack = expect_ack(c.request(env, timeout=20), ACCEPTED, msg_id=env.msg_id)
                results.append(ack.seq)
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        errors.append(f"{council_id}: {e!r}")


def stop_counts(text):
    m = re.search(r"Stopped: .*accepted=(\d+) .*batches=(\d+) batch_waits=(\d+)/(\d+) ", text)
    assert m, f"no stop line with batch_waits in:\n{text}"
    return tuple(int(g) for g in m.groups())


def test_senders_with_one_in_flight_are_answered_and_waits_counted(coordd_factory):
    d = coordd_factory("gather")
    results, errors = [], []
    threads = [threading.Thread(target=one_in_flight,
                                args=(d, f"c{i + 1:02d}", results, errors))
               for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a sender did not finish in 120 s"
    assert not errors, "\n".join(errors)
    total = SENDERS * PER_SENDER
    assert sorted(results) == list(range(1, total + 1)), "every record once, seqs 1..N"
    with d.store() as store:
        assert store.item_count() == total
    assert d.stop() == 0
    accepted, batches, filled, waits = stop_counts(d.stderr())
    assert accepted == total
    # Every commit but the last leaves senders just acked, so the writer waited at least
    # once; a wait ends filled or timed out, and only after a commit.
    assert 1 <= waits <= batches
    assert filled <= waits
