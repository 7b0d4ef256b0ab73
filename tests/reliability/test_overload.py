"""Overload: 1,000 council connections at once, spread over four client processes (the
file limit is raised in pytest_configure, and so for the daemon, which inherits it). While
they push, a sampler asks the query socket for stats and GET /healthz every 250 ms: each
must answer within the bound, and the broker's VmRSS must stay below its bound. Every
record ends ACCEPTED or DUPLICATE (RETRY_LATER answers, from per-council caps or rate
limits, are retried with a backoff by the client), and the checker passes.

Bounds (docs/RELIABILITY.md): the answers within ANSWER_BOUND_S, the broker's VmRSS below
RSS_BOUND_MIB; both looser under the sanitizers, which slow the broker and add memory.
"""

import os
import time

import pytest

from cluster import Sampler, assert_clean
from coordlib import COUNCIL_IDS, free_tcp_port
from relharness import scaled

pytestmark = pytest.mark.local_only

CONNECTIONS = 1000
PROCESSES = 4
SANITIZED = os.environ.get("COORD_SANITIZED") == "1"
ANSWER_BOUND_S = 5.0 if SANITIZED else 2.0
RSS_BOUND_MIB = 600 if SANITIZED else 200


def test_1000_concurrent_council_connections(rel):
    port = free_tcp_port()
    c = rel(overrides={"metrics": {"listen": f"127.0.0.1:{port}"}}, ack_timeout=10.0)
    d = c.daemon
    baseline = d.rss_kb()["VmRSS"]
    per = CONNECTIONS // PROCESSES
    records = scaled(6, 2)
    t0 = time.monotonic()
    with Sampler(d, metrics_port=port, interval=0.25, timeout=ANSWER_BOUND_S * 2) as s:
        workers = [c.worker(f"o{i}", councils=",".join(COUNCIL_IDS), connections=per,
                            records=records, max_in_flight=4, hold=True)
                   for i in range(PROCESSES)]
        deadline = time.monotonic() + 180
        while not all(w.done() for w in workers):
            for w in workers:
                assert w.running(), f"worker {w.name} exited {w.p.poll()}:\n{w.stderr()}"
            assert time.monotonic() < deadline, "the workers did not finish in 180 s"
            time.sleep(0.1)
        pushed_s = time.monotonic() - t0
        # Every connection is still open (--hold): the broker counts them all.
        with d.query() as q:
            deadline = time.monotonic() + 30
            while q.stats().ingest_connections < CONNECTIONS:
                assert time.monotonic() < deadline, (
                    f"only {q.stats().ingest_connections} ingest connections open")
                time.sleep(0.1)
            peak_conns = q.stats().ingest_connections
        summaries = c.stop_workers()
    rep = c.check()
    total = sum(x["accepted"] + x["duplicate"] for x in summaries)
    print(rep.line())
    print(f"overload: {CONNECTIONS} connections, {total} records in {pushed_s:.1f} s, "
          f"retry_later {sum(x['retry_later'] for x in summaries)}, reconnects "
          f"{sum(x['reconnects'] for x in summaries)}; broker VmRSS {baseline // 1024} -> "
          f"max {s.rss_max // 1024} MiB; stats answered within {s.stats_max:.3f} s, "
          f"/healthz within {s.health_max:.3f} s ({s.samples} samples)")
    assert_clean(rep)
    assert rep["in_doubt"] == 0
    assert total == rep["items"] and total >= CONNECTIONS * records
    assert peak_conns >= CONNECTIONS
    assert s.samples >= 1 and not s.failures, s.failures[:5]
    assert s.stats_max < ANSWER_BOUND_S and s.health_max < ANSWER_BOUND_S
    assert s.rss_max < RSS_BOUND_MIB * 1024, f"VmRSS reached {s.rss_max // 1024} MiB"
