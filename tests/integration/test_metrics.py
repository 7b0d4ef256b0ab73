"""The metrics endpoint: /metrics in the Prometheus text format and /healthz, served by the
real daemon on a loopback port, read as Prometheus or a health check would."""
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import coord_pb2 as pb
from coordlib import ACCEPTED, DUPLICATE, REJECTED, expect_ack, free_tcp_port

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


# --- read as Prometheus reads it ------------------------------------------------------

def parse(text):
    """{family name: Metric} and {(sample name, sorted labels): value} from a real
    Prometheus text parser (python3-prometheus-client). Its parser drops "_total" from a
    counter's family name; the samples keep it."""
    from prometheus_client.parser import text_string_to_metric_families

    families, values = {}, {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} twice"
        families[family.name] = family
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in values, f"sample {key} twice"
            values[key] = s.value
    return families, values


def test_metrics_parse_as_prometheus_and_match_what_was_pushed(metered):
    d, port = metered
    with d.subscriber("digest/all/") as sub, d.council("c01") as c:
        kept = [c.env("event"), c.env("petition"), c.env("media"), c.env("letter")]
        for env in kept:
            expect_ack(c.request(env), ACCEPTED)
        expect_ack(c.request(kept[0]), DUPLICATE)
        expect_ack(c.request(kept[1]), DUPLICATE)
        bad = c.env("event")
        bad.event.country = "XX"
        expect_ack(c.request(bad), REJECTED, pb.REASON_INVALID_COUNTRY)
        expect_ack(c.request(c.env("event", council="c99")), REJECTED,
                   pb.REASON_UNKNOWN_COUNCIL)
        expect_ack(c.request(c.env("retraction")), REJECTED, pb.REASON_UNKNOWN_RECORD)
        # A digest set goes out after the commits; wait for it (bounded).
        sub.recv_until(lambda topic, pub: pub.last_seq >= 4)
        status, headers, text = get(port, "/metrics")
        families, v = parse(text)

    assert status == 200
    # Conventions: counters end in _total (the parser reports the family without it),
    # units are in the name, every family has HELP and a TYPE.
    for name, fam in families.items():
        assert name.startswith("coordd_"), name
        assert fam.type in ("counter", "gauge", "histogram"), (name, fam.type)
        assert fam.documentation, f"{name} has no HELP"
        if fam.type == "counter":
            assert all(s.name == name + "_total" for s in fam.samples), name
    assert families["coordd_commit_seconds"].type == "histogram"
    assert families["coordd_batch_size_messages"].type == "histogram"

    def val(name, **labels):
        return v[(name, tuple(sorted(labels.items())))]

    assert val("coordd_messages_received_total") == 9
    assert val("coordd_messages_total", status="accepted") == 4
    assert val("coordd_messages_total", status="duplicate") == 2
    assert val("coordd_messages_total", status="rejected") == 3
    assert val("coordd_messages_total", status="retry_later") == 0
    assert val("coordd_rejections_total", reason="REASON_INVALID_COUNTRY") == 1
    assert val("coordd_rejections_total", reason="REASON_UNKNOWN_COUNCIL") == 1
    assert val("coordd_rejections_total", reason="REASON_UNKNOWN_RECORD") == 1
    assert val("coordd_acks_dropped_total") == 0
    # Histograms: one observation per committed batch; sizes sum to what was committed.
    batches = val("coordd_batches_total")
    assert batches >= 1
    assert val("coordd_commit_seconds_count") == batches
    assert val("coordd_commit_seconds_bucket", le="+Inf") == batches
    assert val("coordd_batch_size_messages_count") == batches
    assert val("coordd_batch_size_messages_sum") == 7  # 4 new, 2 duplicates, 1 unknown
    assert val("coordd_items_published_total") == 4
    assert val("coordd_digests_published_total") >= 1
    assert val("coordd_digest_seeds_total") >= 1
    assert val("coordd_digests_held_total") == 0
    assert val("coordd_digest_errors_total") == 0
    # Four records, one contribution each, far below the limit: nothing folded yet.
    assert val("coordd_digest_log_contributions") == 4
    assert val("coordd_digest_log_limit") == 8192
    assert val("coordd_store_last_seq") == 4
    assert val("coordd_store_records") == 4
    assert val("coordd_store_items") == 4
    assert 0 < val("coordd_store_used_bytes") <= val("coordd_store_map_size_bytes")
    assert val("coordd_store_map_size_bytes") == 64 * 2**20
    # Connections: the council and the subscriber were connected at the scrape.
    assert val("coordd_connections", socket="ingest") >= 1
    assert val("coordd_connections", socket="publish") >= 1
    # The state directory's file system, computed at scrape time.
    st = os.statvfs(d.state_dir)
    assert abs(val("coordd_disk_free_bytes") - st.f_bavail * st.f_frsize) < 256 * 2**20
    assert val("coordd_disk_min_free_bytes") == 256 * 2**20
    assert val("coordd_disk_low") in (0, 1)
    assert val("coordd_store_full") == 0
    for cause in ("disk_full", "map_full", "io_error"):
        assert val("coordd_commit_failures_total", cause=cause) == 0
    assert val("coordd_build_info", version="0.1.0") == 1
    assert val("coordd_uptime_seconds") >= 0


DASHBOARD = Path(__file__).resolve().parent.parent.parent / "config" / "grafana-dashboard.json"


def exported_names(families):
    """Every series name a query may use, from the families declared (a family such as
    coordd_rejections_total declares its samples even before it has any)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {name + suffix for name, fam in families.items() for suffix in suffixes[fam.type]}


def test_grafana_dashboard_uses_only_exported_metrics(metered):
    d, port = metered
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["panels"]
    _, _, text = get(port, "/metrics")
    families, _ = parse(text)
    exported = exported_names(families)

    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    used = set()
    for expr in exprs:
        used |= {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                 if w.startswith("coordd_")}
    missing = used - exported
    assert not missing, f"the dashboard uses metrics coordd does not export: {missing}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "acks", "rejections", "commit latency", "store size",
                  "free disk", "connections"):
        assert topic in titles, topic
    assert any("histogram_quantile(0.99" in e and "coordd_commit_seconds_bucket" in e
               for e in exprs)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
