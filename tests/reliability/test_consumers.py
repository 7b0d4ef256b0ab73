"""Slow and dead consumers on the publish socket (XPUB, [publish] hwm = 100): subscribers
that stop reading, that subscribe and vanish, and that reconnect every few milliseconds,
while 11 councils push. Every record is still acked (the broker never waits for a
subscriber), its memory stays bounded, and an exact subscriber that pauses sees its gaps
through prev_seq and catches up through the query socket's history, ending with exactly the
stored items (docs/PROTOCOL.md, "Staying exact").
"""

import os
import threading
import time

import pytest

import coordlib
from cluster import Sampler, assert_clean
from relharness import scaled

pytestmark = pytest.mark.local_only

PUBLISH_HWM = 100
SANITIZED = os.environ.get("COORD_REL_SANITIZED") == "1"
RSS_BOUND_MIB = 600 if SANITIZED else 200


class ExactItems:
    """The Clone pattern for items: subscribed to every item topic, so the seqs it sees
    must follow one another; a seq that does not, or a topic's prev_seq that is not the
    last seq seen on that topic, is a gap, repaired from history."""

    def __init__(self, daemon):
        self.sub = daemon.subscriber("item/", rcvhwm=PUBLISH_HWM)
        self.query = daemon.query(timeout=20)
        self.items = {}  # seq -> Item bytes
        self.held = 0
        self.topic_last = {}
        self.gaps = 0
        self.prev_seq_gaps = 0
        self.catch_ups = 0
        self.live_applied = 0
        self.skipped = 0

    def close(self):
        self.sub.close()
        self.query.close()

    def catch_up(self):
        self.catch_ups += 1
        items, _pages = self.query.history_all(self.held)
        for it in items:
            assert it.seq == self.held + 1, f"history skipped from {self.held} to {it.seq}"
            self.items[it.seq] = it.SerializeToString()
            self.held = it.seq

    def on_publication(self, topic, pub):
        item = pub.item
        last = self.topic_last.get(topic)
        if last is not None and pub.prev_seq != last:
            self.prev_seq_gaps += 1
        self.topic_last[topic] = pub.last_seq
        if item.seq <= self.held:
            self.skipped += 1
            return
        if item.seq != self.held + 1:
            self.gaps += 1
            self.catch_up()
            if item.seq <= self.held:
                self.skipped += 1
                return
        self.items[item.seq] = item.SerializeToString()
        self.held = item.seq
        self.live_applied += 1

    def read_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                topic, pub = self.sub.recv(0.05)
            except coordlib.PublicationTimeout:
                continue
            self.on_publication(topic, pub)


def churn(daemon, stop, counts, key, pause_s, read):
    """Connect, subscribe to everything, maybe read a little, vanish; until `stop`."""
    while not stop.is_set() and counts[key] < 100_000:
        with daemon.subscriber("", rcvhwm=PUBLISH_HWM) as s:
            if read:
                for _ in range(3):
                    if not s.sock.poll(int(pause_s * 1000)):
                        break
                    s.sock.recv_multipart()
            else:
                time.sleep(pause_s)
        counts[key] += 1


def test_slow_dead_and_flapping_subscribers_cost_no_record(rel):
    c = rel(overrides={"publish": {"hwm": str(PUBLISH_HWM)},
                       "digest": {"publish_interval_ms": "100"}})
    d = c.daemon
    stuck = [d.subscriber("", rcvhwm=PUBLISH_HWM) for _ in range(5)]
    stuck += [d.subscriber("item/", "digest/all/", rcvhwm=PUBLISH_HWM) for _ in range(5)]
    exact = ExactItems(d)
    stop = threading.Event()
    counts = {"vanished": 0, "reconnected": 0}
    threads = [threading.Thread(target=churn, args=(d, stop, counts, "vanished", 0.001, False)),
               threading.Thread(target=churn, args=(d, stop, counts, "reconnected", 0.003,
                                                    True))]
    baseline = d.rss_kb()["VmRSS"]
    records = scaled(500, 100)
    try:
        with Sampler(d) as s:
            for t in threads:
                t.start()
            c.council_workers(records=records, max_in_flight=64)
            # The exact subscriber pauses (its queue and the broker's fill and overflow:
            # a gap is certain), then reads while the councils go on.
            deadline = time.monotonic() + 120
            with d.query() as q:
                while q.stats().accepted < 5 * PUBLISH_HWM:
                    assert time.monotonic() < deadline, "the councils made no progress"
                    time.sleep(0.05)
            while any(w.running() for w in c.live_workers()):
                exact.read_for(0.2)
                assert time.monotonic() < deadline, "the councils did not finish in 120 s"
            summaries = c.finish_workers()
            exact.read_for(0.5)
            exact.catch_up()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for sub in stuck:
            sub.close()
    rep = c.check()
    with d.query() as q:
        stored, _ = q.history_all()
    exact.close()
    print(rep.line())
    print(f"consumers: {len(stuck)} stuck, {counts['vanished']} vanished, "
          f"{counts['reconnected']} reconnects; exact subscriber: {exact.gaps} gaps "
          f"({exact.prev_seq_gaps} by prev_seq), {exact.catch_ups} catch-ups, "
          f"{exact.live_applied} live, {exact.skipped} skipped; VmRSS {baseline // 1024} -> "
          f"max {s.rss_max // 1024} MiB")
    assert_clean(rep)
    assert rep["in_doubt"] == 0
    assert sum(x["accepted"] + x["duplicate"] for x in summaries) == rep["items"]
    assert exact.gaps >= 1 and exact.prev_seq_gaps >= 1 and exact.catch_ups >= 2
    assert exact.items == {it.seq: it.SerializeToString() for it in stored}
    assert counts["vanished"] >= 10 and counts["reconnected"] >= 10
    assert not s.failures, s.failures[:5]
    assert s.rss_max < RSS_BOUND_MIB * 1024, f"VmRSS reached {s.rss_max // 1024} MiB"
