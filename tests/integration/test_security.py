"""CURVE security on the real daemon: who can connect where, whose records are stored, what
each role may ask, secure defaults in the config, key file checks and connection caps.

Keys are made with zmq.curve_keypair(); clients are pyzmq sockets with the CURVE options
set (coordlib.apply_curve). Every wait for something that must NOT happen is bounded by
NO_ANSWER seconds, long enough for a local handshake and an answer by a wide margin.
"""

import os
import re
import subprocess

import pytest
import zmq

import coord_pb2 as pb
from coordlib import (ACCEPTED, REJECTED, AckTimeout, Council, CurveKeys, Keypair,
                      PublicationTimeout, Query, QueryTimeout, Subscriber, expect_ack,
                      free_tcp_port, metric_samples, secure_daemon)

pytestmark = pytest.mark.local_only

NO_ANSWER = 2.0
EX_CONFIG = 78


@pytest.fixture
def secured(coordd_factory, tmp_path):
    return secure_daemon(coordd_factory, tmp_path)


def no_ack(council, msg):
    council.send(msg)
    with pytest.raises(AckTimeout):
        council.recv_ack(NO_ANSWER)


def test_curve_sockets_are_announced(secured):
    err = secured.stderr()
    for socket in ("Listening for councils", "Publishing digests and records", "Answering queries"):
        assert re.search(socket + r" on ipc://\S+ \(curve\)", err), err


def test_plaintext_client_cannot_push(secured):
    with Council(secured.endpoint, "c01") as c:
        no_ack(c, c.env())
    with secured.store() as st:
        assert st.item_count() == 0


def test_unknown_key_is_refused_and_counted(secured):
    stranger = Keypair()
    with Council(secured.endpoint, "c01", curve=secured.keys.curve(stranger)) as c:
        no_ack(c, c.env())
    samples = metric_samples(secured.metrics_port)
    assert samples['coordd_handshakes_total{result="refused"}'] >= 1
    assert "reason='key not allowlisted' domain=ingest" in secured.stderr()
    assert stranger.public.decode() in secured.stderr()
    with secured.store() as st:
        assert st.item_count() == 0


def test_council_key_is_the_council(secured):
    keys = secured.keys
    with Council(secured.endpoint, "c01", curve=keys.curve(keys.c01)) as c:
        ok = c.request(c.env(council="c01"))
        expect_ack(ok, ACCEPTED)
        forged = c.env(council="c02")
        ack = c.request(forged)
        expect_ack(ack, REJECTED, pb.REASON_UNAUTHORIZED, msg_id=forged.msg_id)
        assert "belongs to council 'c01', not 'c02'" in ack.message
    with secured.store() as st:
        items = st.items()
        assert [i.council for i in items] == ["c01"]
        assert st.index(forged.council, forged.msg_id) is None
    assert re.search(r"<4>.*Rejected a record the sender's key does not allow: council=c01 "
                     rf"claimed='c02' msg_id='{forged.msg_id}'", secured.stderr())
    samples = metric_samples(secured.metrics_port)
    assert samples['coordd_rejections_total{reason="REASON_UNAUTHORIZED"}'] == 1


def test_subscriber_key_cannot_push(secured):
    keys = secured.keys
    with Council(secured.endpoint, "c01", curve=keys.curve(keys.desk)) as c:
        no_ack(c, c.env())
    assert "reason='role not allowed on this domain' domain=ingest" in secured.stderr()


def test_only_subscribers_and_admins_read_publish(secured):
    keys = secured.keys
    with Subscriber(secured.publish_endpoint, ["item/"], curve=keys.curve(keys.desk)) as desk, \
            Subscriber(secured.publish_endpoint, ["item/"], curve=keys.curve(keys.ops)) as ops, \
            Subscriber(secured.publish_endpoint, ["item/"], curve=keys.curve(keys.c01)) as spy, \
            Subscriber(secured.publish_endpoint, ["item/"]) as plain, \
            Council(secured.endpoint, "c01", curve=keys.curve(keys.c01)) as c:
        # A subscription travels after the handshake, each on its own: push until both
        # allowed keys have seen an item (one may be subscribed a push later than the other).
        seen = set()
        for _ in range(40):
            expect_ack(c.request(c.env()), ACCEPTED)
            for name, sub in (("desk", desk), ("ops", ops)):
                if name in seen:
                    continue
                try:
                    sub.recv_until(lambda t, p: t.startswith("item/c01/"), timeout=0.25)
                    seen.add(name)
                except PublicationTimeout:
                    pass
            if len(seen) == 2:
                break
        assert seen == {"desk", "ops"}, f"only {sorted(seen)} received an item"
        expect_ack(c.request(c.env()), ACCEPTED)
        desk.recv_until(lambda t, p: t.startswith("item/c01/"))
        for sub in (spy, plain):
            with pytest.raises(PublicationTimeout):
                sub.recv(NO_ANSWER)
    assert "reason='role not allowed on this domain' domain=publish" in secured.stderr()


def test_query_roles(coordd_factory, tmp_path):
    d = secure_daemon(coordd_factory, tmp_path,
                      extra={"query": {"subscriber_history_window": "3"}})
    keys = d.keys
    with Council(d.endpoint, "c01", curve=keys.curve(keys.c01)) as c:
        for _ in range(6):
            expect_ack(c.request(c.env()), ACCEPTED)
    with Query(d.query_endpoint, curve=keys.curve(keys.desk)) as desk, \
            Query(d.query_endpoint, curve=keys.curve(keys.ops)) as ops:
        # A subscriber: digests, status, recent history; no stats, no export.
        assert desk.digest().scope.kind == pb.SCOPE_KIND_ALL
        assert [i.seq for i in desk.history(after_seq=3).items] == [4, 5, 6]
        with pytest.raises(AssertionError, match="stats needs an admin key"):
            desk.stats()
        with pytest.raises(AssertionError, match="exports need an admin key"):
            desk.history(after_seq=0)
        # An admin: everything.
        assert ops.stats().last_seq == 6
        items, _ = ops.history_all(after_seq=0)
        assert [i.seq for i in items] == [1, 2, 3, 4, 5, 6]
    # A council key and a plaintext client get no answer at all.
    for curve in (keys.curve(keys.c01), None):
        with Query(d.query_endpoint, curve=curve) as q:
            req = pb.QueryRequest()
            req.stats.SetInParent()
            q.send_raw([req.SerializeToString()])
            with pytest.raises(QueryTimeout):
                q.recv_raw(NO_ANSWER)
    samples = metric_samples(d.metrics_port)
    assert samples["coordd_query_refused_total"] == 2


def check_config(coordd_bin, path):
    return subprocess.run([coordd_bin, "--check-config", str(path)], capture_output=True,
                          text=True, timeout=30)


def test_check_config_refuses_public_plain_endpoint(coordd_bin, tmp_path):
    conf = tmp_path / "coordd.conf"
    conf.write_text("[coordd]\nstate_dir = /nonexistent\n"
                    "[ingest]\nendpoint = tcp://0.0.0.0:17701\n")
    r = check_config(coordd_bin, conf)
    assert r.returncode == EX_CONFIG, r
    assert (f"{conf}:4: [ingest] endpoint 'tcp://0.0.0.0:17701' is not loopback or ipc:// "
            "and the socket is plain (unauthenticated): configure [security] "
            "secret_key_file and keys_file (security = curve), or bind 127.0.0.1, [::1], "
            "localhost or ipc://") in r.stderr


def test_start_refuses_public_plain_endpoint(coordd_factory):
    d = coordd_factory("public", overrides={"publish": {"endpoint": "tcp://*:17702"}},
                       start=False)
    d.start(wait_ready=False)
    assert d.wait_exit() == EX_CONFIG
    assert "[publish] endpoint 'tcp://*:17702' is not loopback" in d.stderr()


def test_check_config_reads_the_key_files(coordd_bin, tmp_path):
    keys = CurveKeys(tmp_path / "keys")
    conf = tmp_path / "coordd.conf"
    conf.write_text("[coordd]\nstate_dir = /nonexistent\n"
                    f"[security]\nsecret_key_file = {keys.secret_path}\n"
                    f"keys_file = {keys.keys_path}\n"
                    "[ingest]\nendpoint = tcp://0.0.0.0:17701\n")
    r = check_config(coordd_bin, conf)
    assert r.returncode == 0, r
    assert "OK (0 councils, 4 keys)" in r.stdout
    # A broken allowlist: the file and its line are named.
    keys.keys_path.write_text("[council.c01]\npublic_key = not-a-key\n")
    r = check_config(coordd_bin, conf)
    assert r.returncode == EX_CONFIG, r
    assert f"{keys.keys_path}:2:" in r.stderr


def test_secret_key_readable_by_others_is_refused(coordd_factory, tmp_path):
    d = secure_daemon(coordd_factory, tmp_path, name="loose", start=False)
    os.chmod(d.keys.secret_path, 0o644)
    d.start(wait_ready=False)
    assert d.wait_exit() == EX_CONFIG
    err = d.stderr()
    assert str(d.keys.secret_path) in err
    assert "chmod 600" in err, err


def test_max_connections_bites_and_is_counted(coordd_factory):
    port = free_tcp_port()
    d = coordd_factory("capped", overrides={"ingest": {"max_connections": "2"},
                                            "metrics": {"listen": f"127.0.0.1:{port}"}})
    councils = [Council(d.endpoint, "c01") for _ in range(2)]
    extra = []
    try:
        for c in councils:
            expect_ack(c.request(c.env()), ACCEPTED)
        for _ in range(2):
            e = Council(d.endpoint, "c01")
            extra.append(e)
            no_ack(e, e.env())
        # The served connections keep being served.
        for c in councils:
            expect_ack(c.request(c.env()), ACCEPTED)
        samples = metric_samples(port)
        assert samples['coordd_connections_refused_total{socket="ingest"}'] >= 2
        assert samples['coordd_connections_refused_total{socket="query"}'] == 0
        assert "reason='connection limit reached' domain=ingest" in d.stderr()
    finally:
        for c in councils + extra:
            c.close()
    with d.store() as st:
        assert st.item_count() == 4


def test_plain_ipc_config_still_works_unchanged(coordd):
    """Without [security] every socket is plain on ipc:// and serves as before."""
    with coordd.council("c01") as c:
        expect_ack(c.request(c.env()), ACCEPTED)
    with coordd.query() as q:
        assert q.stats().last_seq == 1
    assert zmq.zmq_version_info() >= (4, 3)
