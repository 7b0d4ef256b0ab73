"""The metrics endpoint: /metrics in the Prometheus text format and /healthz, served by the
real daemon on a loopback port, read as Prometheus or a health check would."""
import urllib.error
import urllib.request

import pytest

import coord_pb2 as pb
from coordlib import ACCEPTED, REJECTED, expect_ack, free_tcp_port

pytestmark = pytest.mark.local_only


def get(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def samples(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.fixture
def metered(coordd_factory):
    port = free_tcp_port()
    d = coordd_factory("metrics", overrides={"metrics": {"listen": f"127.0.0.1:{port}"}})
    return d, port


def test_metrics_count_what_ingest_did(metered):
    d, port = metered
    with d.council("c01") as c:
        for _ in range(3):
            expect_ack(c.request(c.env("event")), ACCEPTED)
        bad = c.env("event")
        bad.event.country = "XX"
        expect_ack(c.request(bad), REJECTED, pb.REASON_INVALID_COUNTRY)

    status, headers, text = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    s = samples(text)
    assert s['coordd_messages_total{status="accepted"}'] == 3
    assert s['coordd_messages_total{status="rejected"}'] == 1
    assert s['coordd_rejections_total{reason="REASON_INVALID_COUNTRY"}'] == 1
    assert s["coordd_messages_received_total"] == 4
    assert s["coordd_store_last_seq"] == 3
    assert s["coordd_store_records"] == 3
    assert s['coordd_build_info{version="0.1.0"}'] == 1
    assert s["coordd_disk_free_bytes"] > 0
    # Histograms: every commit is counted once, in cumulative buckets.
    assert s["coordd_batch_size_messages_count"] == s["coordd_batches_total"] >= 1
    assert s["coordd_batch_size_messages_sum"] == 3
    assert s['coordd_commit_seconds_bucket{le="+Inf"}'] == s["coordd_batches_total"]
    assert s["coordd_commit_seconds_sum"] > 0
    # Every family has HELP and TYPE lines.
    for family in ("coordd_messages_total", "coordd_commit_seconds", "coordd_connections"):
        assert f"# TYPE {family} " in text and f"# HELP {family} " in text


def test_healthz_and_errors(metered):
    d, port = metered
    status, _, body = get(port, "/healthz")
    assert status == 200 and body.startswith("ok seq=0")
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    status, _, body = get(port, "/metrics", method="HEAD")
    assert status == 200 and body == ""


def test_port_in_use_fails_startup(coordd_factory):
    port = free_tcp_port()
    coordd_factory("first", overrides={"metrics": {"listen": f"127.0.0.1:{port}"}})
    second = coordd_factory("second", overrides={"metrics": {"listen": f"127.0.0.1:{port}"}},
                            start=False)
    second.start(wait_ready=False)
    assert second.wait_exit(20) == 1
    assert not second.ready_seen()
    assert "Failed to serve metrics" in second.stderr()
