"""Digests against an independent recount.

A synthetic campaign (4,000 records from 11 councils in 70 countries and 50 language tags,
about 10% corrected, 6% retracted and 2% retracted then restored; dates over nine weeks,
the last day, the last hour and the coming month) is pushed through the ingest socket.
Every figure of every digest (per line: count, sum, each country, language and council
with its count; scopes all, each council, each country; windows all, 24 h, 1 h and a range)
must equal what this file recounts from its own data (coordlib.recount, written from
docs/PROTOCOL.md). Then: the same after a restart; and after kill -9 in the middle of a
load, the digest equals the recount of what the store holds, every acked record is in it,
and once the clients resent what was not acked, it equals the recount of all of it.
"""

import os
import signal
import threading

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, DAY_MS, DUPLICATE, HOUR_MS, REJECTED, Campaign, digest_lines,
                      expect_ack, gen_envelope, live_records, push_parallel, recount)

pytestmark = pytest.mark.local_only

WINDOWS = [pb.WINDOW_ALL, pb.WINDOW_LAST_24H, pb.WINDOW_LAST_1H, pb.WINDOW_RANGE]


def scopes_of(campaign):
    countries = sorted({c for env in campaign.live().values()
                        for c in [getattr(env, env.WhichOneof("body")).country
                                  if env.WhichOneof("body") != "letter"
                                  else env.letter.recipient_country]})
    return ([(pb.SCOPE_KIND_ALL, "")] + [(pb.SCOPE_KIND_COUNCIL, c) for c in campaign.councils]
            + [(pb.SCOPE_KIND_COUNTRY, c) for c in countries])


def query_digest(q, kind, scope_id, window, now):
    if window == pb.WINDOW_RANGE:
        # Two weeks ago to three days ago, not on hour boundaries: rounded outwards.
        return q.digest(kind, scope_id, window, start=now - 14 * DAY_MS + 123_456,
                        end=now - 3 * DAY_MS - 654_321)
    return q.digest(kind, scope_id, window)


def check_digest(d, live, kind, scope_id, window):
    what = f"scope {pb.ScopeKind.Name(kind)} {scope_id!r} window {pb.Window.Name(window)}"
    assert d.scope.kind == kind and d.scope.id == scope_id, what
    assert d.window == window, what
    if window == pb.WINDOW_ALL:
        assert d.start == 0 and d.end == 0, what
        start = end = None
    else:
        assert d.start % HOUR_MS == 0 and d.end % HOUR_MS == 0, f"{what}: not whole hours"
        start, end = d.start, d.end
    want = recount(live, kind, scope_id, start, end)
    got = digest_lines(d)
    if got != want:
        keys = sorted(set(got) | set(want))
        diff = [(k, got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)]
        raise AssertionError(f"{what}: {len(diff)} lines differ; first: {diff[:2]}")


def check_headlines(d, live, seq_of, kind, scope_id):
    """Headlines of a whole-campaign digest: the newest live records of the scope."""
    want = []
    for key, env in live.items():
        council = key[0]
        body = env.WhichOneof("body")
        b = getattr(env, body)
        country = env.letter.recipient_country if body == "letter" else b.country
        if kind == pb.SCOPE_KIND_COUNCIL and council != scope_id:
            continue
        if kind == pb.SCOPE_KIND_COUNTRY and country != scope_id:
            continue
        want.append(seq_of[(council, env.msg_id, env.revision)])
    want = sorted(want, reverse=True)[:len(d.headlines)]
    assert [h.seq for h in d.headlines] == want
    assert len(d.headlines) == min(5, len(want))


def digest_all_scopes(q, campaign, live, seq_of=None, windows=WINDOWS):
    """Check every scope in `windows`; returns {(kind, id, window): Digest} of the checked
    digests with window ALL or RANGE (those that do not depend on the clock)."""
    now = campaign.now
    kept = {}
    for kind, scope_id in scopes_of(campaign):
        for window in windows:
            d = query_digest(q, kind, scope_id, window, now)
            check_digest(d, live, kind, scope_id, window)
            if window in (pb.WINDOW_ALL, pb.WINDOW_RANGE):
                kept[(kind, scope_id, window)] = d
            if seq_of is not None and window == pb.WINDOW_ALL:
                check_headlines(d, live, seq_of, kind, scope_id)
    return kept


def acked_seqs(results):
    """{(council, msg_id, revision): seq} of the ACCEPTED acks in push results."""
    out = {}
    for council, acks in results.items():
        for a in acks:
            if a.status == ACCEPTED:
                out[(council, a.msg_id, a.revision)] = a.seq
    return out


def stored_live(q):
    items, _ = q.history_all(limit=5000)
    return live_records(pb.Envelope.FromString(it.envelope) for it in items), items


@pytest.fixture(scope="module")
def campaign_daemon(tmp_path_factory):
    """One daemon with the whole campaign pushed, for the recount and restart tests."""
    import conftest
    d = conftest.Daemon(conftest.coordd_binary(), tmp_path_factory.mktemp("campaign"))
    d.start()
    campaign = Campaign(n_records=4000, seed=1915)
    results = push_parallel(d, campaign.sends())
    yield d, campaign, results
    problems = d.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def test_campaign_digests_equal_the_recount(campaign_daemon):
    d, campaign, results = campaign_daemon
    n_sent = sum(len(v) for v in campaign.sends().values())
    acks = [a for v in results.values() for a in v]
    assert len(acks) == n_sent
    for a in acks:
        expect_ack(a, ACCEPTED)
    live = campaign.live()
    seq_of = acked_seqs(results)
    with d.query() as q:
        kept = digest_all_scopes(q, campaign, live, seq_of)
        whole = kept[(pb.SCOPE_KIND_ALL, "", pb.WINDOW_ALL)]
        assert whole.last_seq == n_sent
        # The campaign is as varied as its description says.
        lines = digest_lines(whole)
        countries = set().union(*(line[2] for line in lines.values()))
        languages = set().union(*(line[3] for line in lines.values()))
        assert len(countries) >= 60 and len(languages) >= 40 and len(lines) >= 25
        assert sum(line[0] for line in lines.values()) == len(live) > 3000


def test_digest_after_restart_equals_before(campaign_daemon):
    d, campaign, _ = campaign_daemon
    live = campaign.live()
    fixed = [pb.WINDOW_ALL, pb.WINDOW_RANGE]
    with d.query() as q:
        before = digest_all_scopes(q, campaign, live, windows=fixed)
    d.restart()
    with d.query() as q:
        after = digest_all_scopes(q, campaign, live, windows=fixed)
    assert before.keys() == after.keys()
    for key in before:
        b, a = before[key], after[key]
        b.generated_at = a.generated_at = 0
        assert b == a, f"{key}: the digest changed across a restart"


def test_kill9_mid_load_then_resend(coordd_factory):
    d = coordd_factory("kill9")
    campaign = Campaign(n_records=3000, seed=2020, prefix="k9")
    sends = campaign.sends()
    total = sum(len(v) for v in sends.values())
    lock = threading.Lock()
    count = [0]
    stop = threading.Event()

    def on_ack(ack):
        with lock:
            count[0] += 1
            if count[0] == total // 2:
                os.kill(d.pid, signal.SIGKILL)
                stop.set()

    results = push_parallel(d, sends, window=64, on_ack=on_ack, stop=stop, idle_timeout=10)
    assert d.wait_exit() == -signal.SIGKILL
    acked = acked_seqs(results)
    assert total // 2 <= len(acked) < total

    d.start()
    with d.query() as q:
        live, items = stored_live(q)
        stored = {(it.council, pb.Envelope.FromString(it.envelope).msg_id,
                   pb.Envelope.FromString(it.envelope).revision): it.seq for it in items}
        # Every acked record is there, with the seq its ack carried.
        for key, seq in acked.items():
            assert stored.get(key) == seq, f"acked {key} (seq {seq}) is not stored"
        # The digests are those of what the store holds (acked, or committed just before
        # the kill without its ack having left).
        assert len(acked) <= len(stored) < total
        now = campaign.now
        for kind, scope_id in scopes_of(campaign)[:20]:
            for window in WINDOWS:
                check_digest(query_digest(q, kind, scope_id, window, now), live, kind,
                             scope_id, window)

    # The councils resend what got no ack, lowest revision first, as clients do.
    resend = {c: [(k, b) for k, b in items if (c, *k) not in acked]
              for c, items in sends.items()}
    results2 = push_parallel(d, resend)
    for c, acks in results2.items():
        for a in acks:
            assert a.status in (ACCEPTED, DUPLICATE), a
    with d.query() as q:
        digest_all_scopes(q, campaign, campaign.live())


def test_retraction_removes_a_country_no_other_record_has(coordd):
    with coordd.council("c01") as c, coordd.query() as q:
        iceland = gen_envelope("event", council="c01", country="IS", languages=["is"],
                               participants=40)
        other = gen_envelope("event", council="c01", country="FR", languages=["fr"])
        expect_ack(c.request(iceland), ACCEPTED)
        expect_ack(c.request(other), ACCEPTED)
        line = digest_lines(q.digest())[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)]
        assert line[0] == 2 and line[1] == 40 + 250 and line[2] == {"FR": 1, "IS": 1}
        assert line[3] == {"fr": 1, "is": 1}
        assert digest_lines(q.digest(pb.SCOPE_KIND_COUNTRY, "IS"))

        retract = gen_envelope("retraction", council="c01", msg_id=iceland.msg_id, revision=2)
        expect_ack(c.request(retract), ACCEPTED)
        line = digest_lines(q.digest())[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)]
        assert line[0] == 1 and line[1] == 250 and line[2] == {"FR": 1} and line[3] == {"fr": 1}
        assert digest_lines(q.digest(pb.SCOPE_KIND_COUNTRY, "IS")) == {}

        restore = gen_envelope("event", council="c01", msg_id=iceland.msg_id, revision=3,
                               country="IS", kind=pb.EVENT_KIND_GATHERING)
        expect_ack(c.request(restore), ACCEPTED)
        lines = digest_lines(q.digest(pb.SCOPE_KIND_COUNTRY, "IS"))
        assert list(lines) == [(pb.CATEGORY_EVENT, pb.EVENT_KIND_GATHERING)]


def test_correction_moves_a_record_between_windows_and_scopes(coordd):
    with coordd.council("c02") as c, coordd.query() as q:
        now = q.digest(window=pb.WINDOW_LAST_1H).end
        env = gen_envelope("media", council="c02", country="GR", date=now - 10 * 60_000,
                           kind=pb.MEDIA_KIND_BROADCAST, local_sources=300)
        expect_ack(c.request(env), ACCEPTED)
        assert digest_lines(q.digest(window=pb.WINDOW_LAST_1H))
        fix = gen_envelope("media", council="c02", msg_id=env.msg_id, revision=2,
                           country="CY", date=now - 30 * DAY_MS, kind=pb.MEDIA_KIND_BROADCAST,
                           local_sources=12)
        expect_ack(c.request(fix), ACCEPTED)
        assert digest_lines(q.digest(window=pb.WINDOW_LAST_1H)) == {}
        assert digest_lines(q.digest(pb.SCOPE_KIND_COUNTRY, "GR")) == {}
        line = digest_lines(q.digest(pb.SCOPE_KIND_COUNTRY, "CY"))[(pb.CATEGORY_MEDIA,
                                                                    pb.MEDIA_KIND_BROADCAST)]
        assert line[:2] == (1, 12)
        rng = q.digest(window=pb.WINDOW_RANGE, start=now - 31 * DAY_MS, end=now - 29 * DAY_MS)
        assert digest_lines(rng)[(pb.CATEGORY_MEDIA, pb.MEDIA_KIND_BROADCAST)][:2] == (1, 12)


def test_range_is_rounded_outwards_to_whole_hours(coordd):
    with coordd.query() as q:
        base = 1_700_000_000_000 // HOUR_MS * HOUR_MS
        d = q.digest(window=pb.WINDOW_RANGE, start=base + 600_000, end=base + 70 * 60_000)
        assert (d.start, d.end) == (base, base + 2 * HOUR_MS)
        d = q.digest(window=pb.WINDOW_RANGE, start=base, end=base + HOUR_MS)
        assert (d.start, d.end) == (base, base + HOUR_MS)


def test_unknown_council_scope_is_an_empty_digest(coordd):
    with coordd.query() as q:
        d = q.digest(pb.SCOPE_KIND_COUNCIL, "c99")
        assert d.scope.id == "c99" and len(d.lines) == 0 and len(d.headlines) == 0


def test_rejected_and_duplicate_records_do_not_count(coordd):
    with coordd.council("c01") as c, coordd.query() as q:
        env = gen_envelope("petition", council="c01", signatures=1000)
        expect_ack(c.request(env), ACCEPTED)
        expect_ack(c.request(env), DUPLICATE)
        expect_ack(c.request(gen_envelope("retraction", council="c01")), REJECTED)
        line = digest_lines(q.digest())[(pb.CATEGORY_PETITION,
                                         pb.PETITION_TARGET_NATIONAL_PARLIAMENT)]
        assert line[:2] == (1, 1000)


def install_mark(d):
    """The digest log's install mark (key b"\\0": a fold installed a slice per batch, not
    finished; docs/ARCHITECTURE.md), or None."""
    with d.store() as s:
        log_db = s.env.open_db(b"digest_log", create=False)
        with s.env.begin(db=log_db) as txn:
            v = txn.get(b"\0")
            return None if v is None else bytes(v)


def test_kill9_between_install_slices(coordd_factory):
    """Past 8,192 logged contributions a fold is installed over several batches. Killed
    while one is partly installed: coordctl verify finds the store intact, the next run's
    digests equal the recount of what was acked, and it goes on from there."""
    from test_backup import coordctl

    d = coordd_factory("slices")
    campaign = Campaign(n_records=12000, seed=4242, prefix="sl")
    sends = campaign.sends()
    acked = {}
    pos, chunk = 0, 40
    longest = max(len(v) for v in sends.values())
    while pos < longest and install_mark(d) is None:
        part = {c: v[pos:pos + chunk] for c, v in sends.items() if v[pos:pos + chunk]}
        acked.update(acked_seqs(push_parallel(d, part)))
        pos += chunk
    assert install_mark(d) is not None, "no fold was caught partly installed"
    assert pos < longest
    assert d.kill9() == -signal.SIGKILL
    assert install_mark(d) is not None
    p = coordctl("verify", d.state_dir)
    assert p.returncode == 0, p.stdout + p.stderr

    d.start()
    now = campaign.now
    with d.query() as q:
        for kind, scope_id in scopes_of(campaign)[:25]:
            for window in WINDOWS:
                check_digest(query_digest(q, kind, scope_id, window, now),
                             campaign.live(set(acked)), kind, scope_id, window)
    rest = {c: v[pos:] for c, v in sends.items() if v[pos:]}
    for acks in push_parallel(d, rest).values():
        for a in acks:
            expect_ack(a, ACCEPTED)
    with d.query() as q:
        digest_all_scopes(q, campaign, campaign.live(), windows=[pb.WINDOW_ALL])
    # A clean stop folds what is left (the log is short), mark and all.
    d.restart()
    assert install_mark(d) is None
    with d.query() as q:
        digest_all_scopes(q, campaign, campaign.live(), windows=[pb.WINDOW_ALL])
