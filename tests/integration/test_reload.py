"""SIGHUP reload on the real daemon: keys and councils change without a restart and without
dropping open connections; a broken config or keys file changes nothing and names its line;
keys that apply only at start are kept, with a warning that a restart is needed.

Daemon.reload() sends SIGHUP and returns once READY=1 follows RELOADING=1 on the notify
socket, so no test sleeps. Waits for something that must NOT happen are bounded by
NO_ANSWER seconds.
"""

import re

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, REJECTED, RETRY_LATER, AckTimeout, Council, Query, expect_ack,
                      metric_samples, render_config, secure_daemon)

pytestmark = pytest.mark.local_only

NO_ANSWER = 2.0


def rewrite(d):
    d.config_path.write_text(render_config(d.config))


def reloads(d):
    s = metric_samples(d.metrics_port)
    return s['coordd_reloads_total{result="ok"}'], s['coordd_reloads_total{result="failed"}']


@pytest.fixture
def secured(coordd_factory, tmp_path):
    return secure_daemon(coordd_factory, tmp_path)


def test_added_council_key_pushes_without_restart(secured):
    keys = secured.keys
    keys.write([e for e in keys.entries if e[1] != "c02"])
    secured.reload()
    with Council(secured.endpoint, "c01", curve=keys.curve(keys.c01)) as c01:
        expect_ack(c01.request(c01.env()), ACCEPTED)
        with Council(secured.endpoint, "c02", curve=keys.curve(keys.c02)) as early:
            early.send(early.env())
            with pytest.raises(AckTimeout):
                early.recv_ack(NO_ANSWER)

        keys.write()
        secured.reload()
        with Council(secured.endpoint, "c02", curve=keys.curve(keys.c02)) as c02:
            expect_ack(c02.request(c02.env()), ACCEPTED)
        # The connection opened before the reload was not dropped.
        expect_ack(c01.request(c01.env()), ACCEPTED)
    assert reloads(secured) == (2, 0)
    assert "Reloaded '" in secured.stderr()
    with secured.store() as st:
        assert sorted(i.council for i in st.items()) == ["c01", "c01", "c02"]


def test_removed_key_is_refused_on_open_and_new_connections(secured):
    keys = secured.keys
    with Council(secured.endpoint, "c01", curve=keys.curve(keys.c01)) as c01, \
            Council(secured.endpoint, "c02", curve=keys.curve(keys.c02)) as c02:
        expect_ack(c01.request(c01.env()), ACCEPTED)
        expect_ack(c02.request(c02.env()), ACCEPTED)

        keys.write([e for e in keys.entries if e[1] != "c02"])
        secured.reload()
        revoked = c02.env()
        ack = c02.request(revoked)
        expect_ack(ack, REJECTED, pb.REASON_UNAUTHORIZED, msg_id=revoked.msg_id)
        assert "not (or no longer) allowlisted" in ack.message
        expect_ack(c01.request(c01.env()), ACCEPTED)
    with Council(secured.endpoint, "c02", curve=keys.curve(keys.c02)) as again:
        again.send(again.env())
        with pytest.raises(AckTimeout):
            again.recv_ack(NO_ANSWER)
    with secured.store() as st:
        assert st.index("c02", revoked.msg_id) is None
        assert st.item_count() == 3
    assert re.search(r"council=\(not allowlisted\) claimed='c02'", secured.stderr())


def test_broken_config_keeps_the_running_one(secured):
    keys = secured.keys
    good = secured.config_path.read_text()
    # Line numbers: the rendered file starts with a comment, then [coordd] ...
    lines = good.splitlines()
    at = lines.index("[ingest]") + 1
    lines.insert(at, "max_batch = lots")
    secured.config_path.write_text("\n".join(lines) + "\n")
    secured.reload()
    err = secured.stderr()
    assert re.search(rf"<3>.*Reload failed: {re.escape(str(secured.config_path))}:{at + 1}: "
                     r"bad number 'lots' for max_batch in \[ingest\].*keeping the running "
                     "configuration", err), err
    with Council(secured.endpoint, "c01", curve=keys.curve(keys.c01)) as c01:
        expect_ack(c01.request(c01.env()), ACCEPTED)

    # A broken keys file: nothing changes either, and its line is named.
    secured.config_path.write_text(good)
    keys.keys_path.write_text("[council.c01]\npublic_key = short\n")
    secured.reload()
    assert re.search(rf"<3>.*Reload failed: {re.escape(str(keys.keys_path))}:2: ",
                     secured.stderr())
    with Council(secured.endpoint, "c02", curve=keys.curve(keys.c02)) as c02:
        expect_ack(c02.request(c02.env()), ACCEPTED)
    assert reloads(secured) == (0, 2)


def test_start_only_keys_warn_and_stay(secured):
    keys = secured.keys
    old_query = secured.query_endpoint
    secured.config["query"]["endpoint"] = old_query + "-moved"
    secured.config["ingest"]["max_batch"] = "7"
    secured.config["query"]["max_connections"] = "5"
    rewrite(secured)
    secured.reload()
    err = secured.stderr()
    for section, key in (("query", "endpoint"), ("ingest", "max_batch")):
        assert re.search(rf"<4>.*Reload: \[{section}\] {key} changed, but it applies only "
                         "at start: restart coordd to apply it; keeping the running value",
                         err), err
    assert "[query] max_connections changed" not in err
    assert reloads(secured) == (1, 0)
    # Still served where it was.
    with Query(old_query, curve=keys.curve(keys.ops)) as q:
        assert q.stats().last_seq == 0


def test_council_added_to_config_takes_effect(coordd_factory):
    d = coordd_factory("plain")
    with d.council("c12") as c:
        expect_ack(c.request(c.env()), REJECTED, pb.REASON_UNKNOWN_COUNCIL)
        d.config["council.c12"] = {"name": "Council Twelve", "country": "BR"}
        rewrite(d)
        d.reload()
        expect_ack(c.request(c.env()), ACCEPTED)
        # And removed again.
        del d.config["council.c12"]
        rewrite(d)
        d.reload()
        expect_ack(c.request(c.env()), REJECTED, pb.REASON_UNKNOWN_COUNCIL)
    assert d.stderr().count("Reloaded '") == 2


def flood(c, n):
    """Send n records at once, then collect their n acks: {status: count}."""
    for _ in range(n):
        c.send(c.env())
    counts = {}
    for _ in range(n):
        a = c.recv_ack(timeout=10)
        counts[a.status] = counts.get(a.status, 0) + 1
    return counts


def test_limits_change_without_restart(coordd_factory):
    d = coordd_factory("limits", overrides={"ingest": {"max_inflight_per_council": "4"}})
    with d.council("c01") as c:
        # Cap 4: a burst of 200 gets most answered RETRY_LATER at once.
        counts = flood(c, 200)
        assert counts.get(RETRY_LATER, 0) > 0, counts
        accepted = counts.get(ACCEPTED, 0)
        d.config["ingest"]["max_inflight_per_council"] = "1000"
        rewrite(d)
        d.reload()
        # Same connection, raised cap: the same burst is accepted whole.
        counts = flood(c, 200)
        assert counts == {ACCEPTED: 200}, counts
    with d.store() as s:
        assert s.item_count() == accepted + 200
