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

from cluster import Sampler, assert_clean
from relharness import scaled
from subs import ExactItems, churn

pytestmark = pytest.mark.local_only

PUBLISH_HWM = 100
SANITIZED = os.environ.get("COORD_SANITIZED") == "1"
RSS_BOUND_MIB = 600 if SANITIZED else 200


def test_slow_dead_and_flapping_subscribers_cost_no_record(rel):
    c = rel(overrides={"publish": {"hwm": str(PUBLISH_HWM)},
                       "digest": {"publish_interval_ms": "100"}})
    d = c.daemon
    stuck = [d.subscriber("", rcvhwm=PUBLISH_HWM) for _ in range(5)]
    stuck += [d.subscriber("item/", "digest/all/", rcvhwm=PUBLISH_HWM) for _ in range(5)]
    exact = ExactItems(d, rcvhwm=PUBLISH_HWM)
    stop = threading.Event()
    counts = {"vanished": 0, "reconnected": 0}
    threads = [threading.Thread(target=churn, args=(d, stop, counts, "vanished", 0.001, False,
                                                    PUBLISH_HWM)),
               threading.Thread(target=churn, args=(d, stop, counts, "reconnected", 0.003,
                                                    True, PUBLISH_HWM))]
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
