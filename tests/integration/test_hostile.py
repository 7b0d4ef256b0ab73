"""Hostile clients against the real daemon: random frames, huge frames, floods of tiny
messages, connection churn, wrong framing, a council beyond its in-flight cap or its rate
limit, and oversized query requests and subscriptions.

Each test checks the same three things around its hostile traffic:
  - an honest council (c02, on its own connection) still pushes and gets ACCEPTED, during
    the attack where the attack runs in a thread, and after it;
  - the daemon's resident memory stays bounded (VmRSS grows by less than RSS_BOUND_KB);
  - the store holds exactly what was ACCEPTED: hostile traffic adds nothing.
and that the limit which bites is counted in /metrics (coordd_limit_hits_total). Every loop
is bounded in count and every wait in time.
"""
import os
import random
import threading
import time
import urllib.request

import pytest
import zmq

import coord_pb2 as pb
from coordlib import (ACCEPTED, REJECTED, RETRY_LATER, AckTimeout, QueryTimeout, expect_ack,
                      free_tcp_port, gen_event)

pytestmark = pytest.mark.local_only

RSS_BOUND_KB = 64 * 1024
HONEST = "c02"


def metrics(port):
    """{'name{labels}': value} of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def limit_hits(port, limit):
    return metrics(port)[f'coordd_limit_hits_total{{limit="{limit}"}}']


class Hostile:
    """A daemon with /metrics on a loopback port, and the bookkeeping every test shares."""

    def __init__(self, factory, ingest=None, **sections):
        self.port = free_tcp_port()
        overrides = {"metrics": {"listen": f"127.0.0.1:{self.port}"}}
        if ingest:
            overrides["ingest"] = ingest
        overrides.update(sections)
        self.d = factory("hostile", overrides=overrides)
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.MAX_SOCKETS, 4096)
        self.accepted = 0
        # Warm up (first commit, first allocations) before the baseline is taken.
        self.honest_push(20)
        with self.d.store() as st:
            self.items_before = st.item_count()
        self.rss_before = self.d.rss_kb()["VmRSS"]

    def honest_push(self, n=5, timeout=20.0):
        """An honest council pushes `n` records one at a time: each must be ACCEPTED."""
        with self.d.council(HONEST, ctx=self.ctx, timeout=timeout) as c:
            for _ in range(n):
                expect_ack(c.request(c.env()), ACCEPTED)
        self.accepted += n

    def dealer(self, opts=None):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        for k, v in (opts or {}).items():
            s.setsockopt(k, v)
        s.connect(self.d.endpoint)
        return s

    def check_after(self, extra_accepted=0):
        """After the attack: honest pushes work, memory is bounded, the store holds only
        what was ACCEPTED."""
        self.honest_push(5)
        rss_after = self.d.rss_kb()["VmRSS"]
        grew = rss_after - self.rss_before
        assert grew < RSS_BOUND_KB, f"VmRSS grew by {grew} KiB ({self.rss_before} -> {rss_after})"
        with self.d.store() as st:
            items = st.item_count()
        # The baseline was taken after the warm-up push, which self.accepted includes.
        expected = self.items_before + self.accepted - 20 + extra_accepted
        assert items == expected, f"store has {items} items, expected {expected}"

    def close(self):
        self.ctx.destroy(linger=0)


@pytest.fixture
def hostile(coordd_factory):
    made = []

    def make(**kw):
        h = Hostile(coordd_factory, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


class HonestLoop(threading.Thread):
    """An honest council pushing records one at a time while an attack runs."""

    def __init__(self, h, max_records=2000):
        super().__init__(daemon=True)
        self.h = h
        self.max_records = max_records
        self.stop = threading.Event()
        self.accepted = 0
        self.error = None

    def run(self):
        try:
            with self.h.d.council(HONEST, ctx=self.h.ctx, timeout=20.0) as c:
                while not self.stop.is_set() and self.accepted < self.max_records:
                    expect_ack(c.request(c.env()), ACCEPTED)
                    self.accepted += 1
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(60)
        assert not self.is_alive(), "the honest council's loop did not finish"
        assert self.error is None, f"honest council failed during the attack: {self.error!r}"
        assert self.accepted > 0, "the honest council got nothing ACCEPTED during the attack"
        self.h.accepted += self.accepted


def collect(sock, n, timeout=30.0):
    """Receive `n` Acks from a DEALER (each one frame); fail after `timeout` s without one."""
    acks = []
    while len(acks) < n:
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AckTimeout(f"{len(acks)}/{n} Acks within {timeout} s of the last one")
        frames = sock.recv_multipart()
        assert len(frames) == 1, f"an Ack is one frame, got {len(frames)}"
        acks.append(pb.Ack.FromString(frames[0]))
    return acks


def test_random_frames(hostile):
    h = hostile()
    rng = random.Random(1915)
    honest = HonestLoop(h)
    honest.start()
    sock = h.dealer()
    n = 5000
    for _ in range(n):
        sock.send(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600))))
    acks = collect(sock, n)
    honest.finish()
    sock.close()
    for ack in acks:
        expect_ack(ack, REJECTED)
    h.check_after()


def test_huge_frames(hostile):
    h = hostile(ingest={"max_message_bytes": "64K"})
    honest = HonestLoop(h)
    honest.start()
    # Above max_message_bytes but below the drop limit (1 MiB): REJECTED, TOO_LARGE.
    sock = h.dealer()
    big = os.urandom(100 * 1024)
    for _ in range(50):
        sock.send(big)
    for ack in collect(sock, 50):
        expect_ack(ack, REJECTED, reason=pb.REASON_TOO_LARGE)
    assert limit_hits(h.port, "max_message_bytes") == 50
    # Above the drop limit: libzmq drops the connection, nothing is answered.
    huge = os.urandom(4 * 1024 * 1024)
    for _ in range(10):
        s = h.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, -1)
        mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        s.connect(h.d.endpoint)
        s.send(huge)
        assert mon.poll(10_000, zmq.POLLIN), "a frame above the drop limit kept its connection"
        assert not s.poll(0, zmq.POLLIN), "a frame above the drop limit was answered"
        s.disable_monitor()
        mon.close(linger=0)
        s.close()
    honest.finish()
    sock.close()
    h.check_after()


def test_thousands_of_tiny_messages(hostile):
    h = hostile()
    honest = HonestLoop(h)
    honest.start()
    sock = h.dealer({zmq.SNDHWM: 100_000, zmq.RCVHWM: 100_000})
    n = 20_000
    for i in range(n):
        sock.send(b"" if i % 2 else b"\x08")
    acks = collect(sock, n)
    honest.finish()
    sock.close()
    for ack in acks:
        expect_ack(ack, REJECTED, reason=pb.REASON_MALFORMED)
    h.check_after()


def test_connections_opened_and_dropped(hostile):
    h = hostile()
    honest = HonestLoop(h)
    honest.start()
    rounds, per_round = 4, 200
    for r in range(rounds):
        socks = [h.dealer() for _ in range(per_round)]
        # Half say something before leaving (and leave without reading the answer).
        for i, s in enumerate(socks):
            if i % 2:
                s.send(b"\x00garbage")
        # Wait until the daemon has seen them all, so the drop happens on open connections.
        deadline = time.monotonic() + 20
        while metrics(h.port)['coordd_connections{socket="ingest"}'] < per_round:
            assert time.monotonic() < deadline, f"round {r}: connections not all accepted"
            time.sleep(0.05)
        for s in socks:
            s.close()
    # Every dropped connection is forgotten: only the honest one (at most) stays.
    deadline = time.monotonic() + 20
    while metrics(h.port)['coordd_connections{socket="ingest"}'] > 1:
        assert time.monotonic() < deadline, "dropped connections still counted as open"
        time.sleep(0.05)
    honest.finish()
    m = metrics(h.port)
    # Senders tracked by the limits are bounded (connections gone, buckets refilled or not).
    assert m["coordd_limit_senders"] <= rounds * per_round + 2
    h.check_after()


def test_wrong_number_of_frames(hostile):
    h = hostile()
    honest = HonestLoop(h)
    honest.start()
    sock = h.dealer()
    env = gen_event(council="c01").SerializeToString()
    shapes = [[env, env], [env, b""], [b"", env, env], [env] * 10, [b"x"] * 100]
    n = 0
    for _ in range(100):
        for frames in shapes:
            sock.send_multipart(frames)
            n += 1
    acks = collect(sock, n)
    honest.finish()
    sock.close()
    for ack in acks:
        expect_ack(ack, REJECTED, reason=pb.REASON_BAD_FRAMING)
    h.check_after()


def test_flood_beyond_inflight_gets_retry_later(hostile):
    h = hostile(ingest={"max_inflight_per_council": "8"})
    sock = h.dealer({zmq.SNDHWM: 100_000, zmq.RCVHWM: 100_000})
    n = 3000
    envs = [gen_event(council="c01") for _ in range(n)]
    frames = [e.SerializeToString() for e in envs]
    honest = HonestLoop(h)
    honest.start()
    for f in frames:
        sock.send(f)
    acks = collect(sock, n)
    honest.finish()
    accepted = [a for a in acks if a.status == ACCEPTED]
    retry = [a for a in acks if a.status == RETRY_LATER]
    assert len(accepted) + len(retry) == n, "only ACCEPTED and RETRY_LATER expected"
    assert retry, "the flood never went beyond max_inflight_per_council"
    for a in retry:
        expect_ack(a, RETRY_LATER, reason=pb.REASON_OVERLOADED)
        assert a.msg_id and a.revision == 1, "RETRY_LATER must echo msg_id and revision"
        assert "max_inflight_per_council" in a.message
    assert limit_hits(h.port, "max_inflight_per_council") == len(retry)
    # What was refused can be sent again: one at a time it is ACCEPTED.
    by_id = {e.msg_id: e for e in envs}
    resent = 0
    for a in retry[:50]:
        sock.send(by_id[a.msg_id].SerializeToString())
        expect_ack(collect(sock, 1)[0], ACCEPTED, msg_id=a.msg_id)
        resent += 1
    sock.close()
    h.check_after(extra_accepted=len(accepted) + resent)


def test_rate_limit_bites(hostile):
    rate = 50
    h = hostile(ingest={"rate_limit": str(rate), "rate_burst": str(rate)})
    sock = h.dealer({zmq.SNDHWM: 100_000, zmq.RCVHWM: 100_000})
    n = 600
    frames = [gen_event(council="c01").SerializeToString() for _ in range(n)]
    start = time.monotonic()
    for f in frames:
        sock.send(f)
    acks = collect(sock, n)
    elapsed = time.monotonic() - start
    accepted = [a for a in acks if a.status == ACCEPTED]
    retry = [a for a in acks if a.status == RETRY_LATER]
    assert len(accepted) + len(retry) == n
    # The burst, plus what the bucket refilled while the flood lasted (one second of slack).
    assert rate <= len(accepted) <= rate + rate * (elapsed + 1), (
        f"{len(accepted)} accepted in {elapsed:.2f} s at {rate}/s with a burst of {rate}")
    for a in retry:
        expect_ack(a, RETRY_LATER, reason=pb.REASON_OVERLOADED)
        assert "rate_limit" in a.message
    assert limit_hits(h.port, "rate_limit") == len(retry)
    sock.close()
    # Another sender has its own bucket: the honest council is not limited by the flood.
    h.check_after(extra_accepted=len(accepted))


def test_oversized_query_requests(hostile):
    h = hostile(query={"max_request_bytes": "64K"})
    with h.d.query(ctx=h.ctx, timeout=10) as q:
        # Above the 4 KiB request limit: answered with an error, counted.
        resp = q.ask_raw(b"\x0a" * 8192)
        assert resp.WhichOneof("body") == "error"
        assert "exceeds the limit" in resp.error.message
        assert limit_hits(h.port, "query_request_bytes") == 1
        # Above max_request_bytes: dropped with the connection, unanswered.
        q.send_raw([os.urandom(128 * 1024)])
        with pytest.raises(QueryTimeout):
            q.recv_raw(timeout=1.0)
        # The socket reconnects; the next request is answered.
        assert q.stats().last_seq >= 20
    h.check_after()


def test_oversized_subscription_drops_subscriber(hostile):
    h = hostile(publish={"max_subscription_bytes": "1K"})
    with h.d.subscriber("item/", ctx=h.ctx, timeout=10) as honest_sub:
        # A subscriber that never reconnects, with one ordinary and one oversized
        # subscription: libzmq drops its connection when the oversized one arrives.
        bad = h.ctx.socket(zmq.SUB)
        bad.setsockopt(zmq.LINGER, 0)
        bad.setsockopt(zmq.RECONNECT_IVL, -1)
        bad.setsockopt(zmq.SUBSCRIBE, b"item/")
        bad.setsockopt(zmq.SUBSCRIBE, b"item/" + b"x" * 4096)
        mon = bad.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        bad.connect(h.d.publish_endpoint)
        assert mon.poll(10_000, zmq.POLLIN), "the oversized subscription was not dropped"
        bad.disable_monitor()
        mon.close(linger=0)
        # The honest subscriber still gets items; the dropped one gets none.
        deadline = time.monotonic() + 20
        got_honest = False
        while not got_honest:
            assert time.monotonic() < deadline, "the honest subscriber never got an item"
            h.honest_push(1)
            got_honest = bool(honest_sub.pending(0.2))
        assert not bad.poll(500, zmq.POLLIN), "a dropped subscriber received items"
        bad.close(linger=0)
    h.check_after()
