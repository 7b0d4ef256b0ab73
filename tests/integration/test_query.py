"""The query socket: history pages (verbatim items, paging, council filter, byte and item
limits), record status, stats with connection counts, DEALER and REQ framing, and every
kind of bad request answered with a clear error (never a crash)."""

import struct
import time

import pytest

import coord_pb2 as pb
from coordlib import ACCEPTED, RETRY_LATER, Query, expect_ack, gen_envelope, now_ms

pytestmark = pytest.mark.local_only


def push(daemon, envelopes, council="c01"):
    """Push envelopes from one council; returns their Acks (all must be ACCEPTED)."""
    with daemon.council(council) as c:
        items = [((e.msg_id, e.revision), e.SerializeToString()) for e in envelopes]
        acks = c.push_all(items)
    for a in acks:
        expect_ack(a, ACCEPTED)
    return sorted(acks, key=lambda a: a.seq)


def stored_item_bytes(daemon):
    """{seq: the packed Item bytes as the store holds them}."""
    with daemon.store() as st:
        with st.env.begin(db=st.items_db) as txn:
            return {struct.unpack(">Q", bytes(k))[0]: bytes(v) for k, v in txn.cursor()}


def wait_for(pred, what, timeout=10.0):
    """Poll the broker until pred() holds (connection counts come from monitor events,
    which arrive asynchronously)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_history_pages_hold_the_stored_items_verbatim(coordd_factory):
    d = coordd_factory(overrides={"query": {"history_limit": 100}})
    push(d, [gen_envelope("event", council="c01") for _ in range(120)])
    push(d, [gen_envelope("letter", council="c02") for _ in range(130)], council="c02")
    stored = stored_item_bytes(d)
    assert len(stored) == 250
    with d.query() as q:
        sizes, after, got = [], 0, []
        while True:
            page = q.history(after_seq=after)
            sizes.append(len(page.items))
            assert page.last_seq == 250
            got.extend(page.items)
            if page.complete:
                break
            after = page.next_after_seq
        assert sizes == [100, 100, 50]
        assert page.next_after_seq == 250
        assert [it.seq for it in got] == list(range(1, 251))
        for it in got:
            assert it.SerializeToString() == stored[it.seq], f"item {it.seq} differs"
        # Asking past the end: an empty, complete page.
        page = q.history(after_seq=250)
        assert len(page.items) == 0 and page.complete and page.next_after_seq == 250
        page = q.history(after_seq=10_000)
        assert len(page.items) == 0 and page.complete


def test_history_filters_by_council_and_caps_the_limit(coordd_factory):
    d = coordd_factory(overrides={"query": {"history_limit": 10, "history_limit_max": 40}})
    push(d, [gen_envelope("event", council="c01") for _ in range(60)])
    push(d, [gen_envelope("event", council="c03") for _ in range(30)], council="c03")
    with d.query() as q:
        page = q.history(limit=1000)
        assert len(page.items) == 40, "the limit is capped by history_limit_max"
        page = q.history()
        assert len(page.items) == 10, "limit 0 means history_limit"
        items, pages = q.history_all(council="c03", limit=7)
        assert [it.council for it in items] == ["c03"] * 30
        assert [it.seq for it in items] == list(range(61, 91))
        assert pages == 5
        items, _ = q.history_all(council="c11")
        assert items == []


def test_history_page_stops_at_the_byte_budget(coordd_factory):
    d = coordd_factory(overrides={"query": {"history_bytes_max": "64K"}})
    big = "x" * 1000
    push(d, [gen_envelope("event", council="c01", title=big) for _ in range(200)])
    with d.query() as q:
        page = q.history(limit=1000)
        n = len(page.items)
        size = sum(len(it.SerializeToString()) for it in page.items)
        assert 40 < n < 200 and size <= 64 * 1024, (n, size)
        assert not page.complete and page.next_after_seq == page.items[-1].seq
        items, pages = q.history_all(limit=1000)
        assert [it.seq for it in items] == list(range(1, 201)) and pages >= 4


def test_status_follows_revisions_and_retractions(coordd):
    env = gen_envelope("event", council="c01")
    with coordd.council("c01") as c, coordd.query() as q:
        a1 = expect_ack(c.request(env), ACCEPTED)
        st = q.status("c01", env.msg_id)
        assert st.found and st.seq == a1.seq and st.revision == 1 and not st.retracted
        assert st.item.seq == a1.seq and st.item.council == "c01"
        assert st.item.envelope == env.SerializeToString()

        fix = gen_envelope("event", council="c01", msg_id=env.msg_id, revision=2, title="Fixed")
        a2 = expect_ack(c.request(fix), ACCEPTED)
        ret = gen_envelope("retraction", council="c01", msg_id=env.msg_id, revision=3)
        a3 = expect_ack(c.request(ret), ACCEPTED)
        st = q.status("c01", env.msg_id)
        assert st.found and st.seq == a3.seq and st.revision == 3 and st.retracted
        assert pb.Envelope.FromString(st.item.envelope).WhichOneof("body") == "retraction"
        assert a2.seq < a3.seq

        st = q.status("c01", "never-sent")
        assert not st.found and st.seq == 0 and not st.HasField("item")
        st = q.status("c02", env.msg_id)
        assert not st.found


def test_stats_count_records_and_connections(coordd_factory):
    d = coordd_factory()
    t0 = now_ms()
    councils = [d.council(c) for c in ("c01", "c02", "c03")]
    subs = [d.subscriber("item/") for _ in range(2)]
    try:
        for c in councils:
            expect_ack(c.request(c.env("event")), ACCEPTED)
        with d.query() as q:
            st = wait_for(lambda: (lambda s: s if (s.ingest_connections, s.publish_connections)
                                   == (3, 2) else None)(q.stats()),
                          "3 council and 2 subscriber connections")
            assert st.query_connections >= 1
            assert st.last_seq == 3 and st.items == 3 and st.records == 3
            assert st.accepted == 3 and st.duplicate == 0 and st.rejected == 0
            assert st.batches >= 1
            assert st.store_bytes > 0 and st.map_size >= st.store_bytes
            assert st.version
            # The daemon started before t0 (it was ready): its uptime reaches back to then.
            now = int(time.time() * 1000)
            assert st.started_at <= t0 + 1000
            assert 0 < st.uptime_ms <= now - st.started_at + 1000
        for c in councils:
            c.close()
        for s in subs:
            s.close()
        with d.query() as q:
            wait_for(lambda: (lambda s: (s.ingest_connections, s.publish_connections)
                              == (0, 0))(q.stats()), "connections to close")
    finally:
        for c in councils:
            c.close()
        for s in subs:
            s.close()


def test_req_and_dealer_envelopes_are_echoed(coordd):
    req = pb.QueryRequest(request_id=77)
    req.stats.SetInParent()
    data = req.SerializeToString()
    with Query(coordd.query_endpoint, req=True) as q:
        resp = q.ask_raw(data)
        assert resp.request_id == 77 and resp.WhichOneof("body") == "stats"
    with coordd.query() as q:
        # A DEALER imitating REQ: the empty delimiter comes back in front of the answer.
        q.send_raw([b"", data])
        frames = q.recv_raw()
        assert len(frames) == 2 and frames[0] == b""
        assert pb.QueryResponse.FromString(frames[1]).request_id == 77
        # Routing frames of a chain of proxies come back too, in order.
        q.send_raw([b"hop1", b"hop2", b"", data])
        frames = q.recv_raw()
        assert frames[:3] == [b"hop1", b"hop2", b""]


def test_message_with_too_many_frames_is_dropped(coordd):
    req = pb.QueryRequest(request_id=5)
    req.stats.SetInParent()
    with coordd.query() as q:
        q.send_raw([b"x"] * 20 + [req.SerializeToString()])
        with pytest.raises(AssertionError):
            q.recv_raw(timeout=0.5)
        assert q.stats().last_seq >= 0  # still answering


def _request(**fields):
    req = pb.QueryRequest(request_id=9)
    for path, value in fields.items():
        target = req
        *parents, leaf = path.split("__")
        for p in parents:
            target = getattr(target, p)
        if value is None:
            target.SetInParent()
        else:
            setattr(target, leaf, value)
    return req.SerializeToString()


BAD_REQUESTS = {
    "undecodable": (b"\xff\xff\xff\xff", "not a QueryRequest", 0),
    "too_large": (_request(digest__headlines=1) + b"\x00" * 5000, "exceeds the limit", 0),
    "no_body": (pb.QueryRequest(request_id=9).SerializeToString(), "empty or unknown", 9),
    "unknown_body": (pb.QueryRequest(request_id=9).SerializeToString() + b"\x7a\x00",
                     "empty or unknown", 9),
    "all_scope_with_id": (_request(digest__scope__kind=pb.SCOPE_KIND_ALL,
                                   digest__scope__id="c01"), "must be empty", 9),
    "council_scope_without_id": (_request(digest__scope__kind=pb.SCOPE_KIND_COUNCIL),
                                 "is not a council id", 9),
    "council_scope_bad_id": (_request(digest__scope__kind=pb.SCOPE_KIND_COUNCIL,
                                      digest__scope__id="C/01"), "is not a council id", 9),
    "country_lower_case": (_request(digest__scope__kind=pb.SCOPE_KIND_COUNTRY,
                                    digest__scope__id="fr"), "ISO 3166-1", 9),
    "country_unassigned": (_request(digest__scope__kind=pb.SCOPE_KIND_COUNTRY,
                                    digest__scope__id="XX"), "ISO 3166-1", 9),
    "unknown_scope_kind": (_request(digest__scope__kind=9), "not a known ScopeKind", 9),
    "unknown_window": (_request(digest__window=9), "not a known Window", 9),
    "range_reversed": (_request(digest__window=pb.WINDOW_RANGE, digest__start=2000,
                                digest__end=1000), "WINDOW_RANGE needs", 9),
    "range_empty": (_request(digest__window=pb.WINDOW_RANGE, digest__start=1000,
                             digest__end=1000), "WINDOW_RANGE needs", 9),
    "range_negative": (_request(digest__window=pb.WINDOW_RANGE, digest__start=-5,
                                digest__end=1000), "WINDOW_RANGE needs", 9),
    "bounds_without_range": (_request(digest__window=pb.WINDOW_LAST_1H, digest__start=5),
                             "only for WINDOW_RANGE", 9),
    "status_without_council": (_request(status__msg_id="m1"), "status.council", 9),
    "status_without_msg_id": (_request(status__council="c01"), "status.msg_id", 9),
    "status_long_msg_id": (_request(status__council="c01", status__msg_id="m" * 129),
                           "status.msg_id", 9),
    "history_bad_council": (_request(history__council="Not A Council"), "history.council", 9),
}


@pytest.fixture(scope="module")
def query_daemon(shared_coordd):
    return shared_coordd


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error(query_daemon, name):
    data, message, request_id = BAD_REQUESTS[name]
    with query_daemon.query() as q:
        resp = q.ask_raw(data)
        assert resp.WhichOneof("body") == "error", f"{name}: {resp}"
        assert message in resp.error.message, resp.error.message
        assert resp.request_id == request_id
        # The broker carries on.
        assert q.stats().version


def test_digest_headlines_default_and_cap(coordd):
    push(coordd, [gen_envelope("event", council="c01") for _ in range(60)])
    with coordd.query() as q:
        assert len(q.digest().headlines) == 5
        assert len(q.digest(headlines=2).headlines) == 2
        d = q.digest(headlines=1000)
        assert len(d.headlines) == 50
        assert [h.seq for h in d.headlines] == list(range(60, 10, -1))


def test_unanswered_when_query_socket_gone_is_a_timeout(tmp_path):
    """What clients see with no broker: no answer, not an error (they time out)."""
    with Query(f"ipc://{tmp_path}/nothing.sock") as q:
        with pytest.raises(AssertionError):
            q.recv_raw(timeout=0.2)


def test_frames_above_the_socket_limit_drop_the_connection(coordd):
    with coordd.query() as q:
        q.send_raw([b"\x00" * 70_000])
        with pytest.raises(AssertionError):
            q.recv_raw(timeout=0.5)
    with coordd.query() as q:
        assert q.stats().version


def test_ingest_still_takes_records_while_queries_run(coordd):
    """A history request does not hold ingest: both answer."""
    push(coordd, [gen_envelope("event", council="c01") for _ in range(50)])
    with coordd.query() as q, coordd.council("c02") as c:
        for _ in range(20):
            page = q.history(limit=50)
            assert len(page.items) == 50
            ack = c.request(c.env("event"))
            assert ack.status in (ACCEPTED, RETRY_LATER)


@pytest.mark.parametrize("section", ["publish", "query", "ingest"])
def test_endpoint_in_use_fails_startup_cleanly(coordd_factory, section):
    """A socket that cannot bind stops the start: exit 1, the endpoint named, no READY=1,
    and everything opened before it closed again (the sanitizers would see a leak)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        endpoint = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        d = coordd_factory(section, overrides={section: {"endpoint": endpoint}}, start=False)
        d.start(wait_ready=False)
        status = d.wait_exit(20)
    assert status == 1, d.stderr()
    assert not d.ready_seen()
    assert endpoint in d.stderr()
