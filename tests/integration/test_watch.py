"""coordctl and coord-watch, run as a person would run them: their output, their JSON (the
proto3 JSON mapping, checked with python3-protobuf's json_format), their exit codes, and a
clear error within the timeout when the broker is unreachable.

COORDCTL_BIN and COORD_WATCH_BIN name the binaries (meson passes them)."""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

import coord_pb2 as pb
from coordlib import ACCEPTED, DAY_MS, digest_lines, expect_ack, gen_envelope, now_ms

pytestmark = pytest.mark.local_only

REPO = Path(__file__).resolve().parent.parent.parent
EXIT_BROKER, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def tool(name, env_var):
    path = os.environ.get(env_var) or str(REPO / "build" / "clients" / name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} not built ({env_var} unset)")
    return path


@pytest.fixture
def coordctl(coordd):
    binary = tool("coordctl", "COORDCTL_BIN")

    def run(*args, timeout=20, endpoint=None):
        argv = [binary, "--endpoint", endpoint or coordd.query_endpoint, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def watch_bin():
    return tool("coord-watch", "COORD_WATCH_BIN")


def push_known_records(d):
    """3 rallies in 2 countries (FR, DE) and 2 broadcasts carried by 1,500 sources, two
    hours ago; 1 letter (to a parliament in DE), three days ago."""
    recent, old = now_ms() - 2 * 3_600_000, now_ms() - 3 * DAY_MS
    envs = [gen_envelope("event", council="c01", country="FR", participants=1000, date=recent),
            gen_envelope("event", council="c01", country="FR", participants=200, date=recent),
            gen_envelope("event", council="c02", country="DE", participants=0, date=recent),
            gen_envelope("letter", council="c03", sent_at=old),
            gen_envelope("media", council="c02", kind=pb.MEDIA_KIND_BROADCAST,
                         local_sources=1000, date=recent),
            gen_envelope("media", council="c02", kind=pb.MEDIA_KIND_BROADCAST,
                         local_sources=500, date=recent)]
    acks = []
    for env in envs:
        with d.council(env.council) as c:
            acks.append(expect_ack(c.request(env), ACCEPTED))
    return envs, acks


def test_coordctl_help_and_usage(coordctl):
    r = coordctl("--help")
    assert r.returncode == 0
    for word in ("digest", "history", "status", "stats", "--window", "Exit status"):
        assert word in r.stdout
    r = coordctl("digest", "--window", "yesterday")
    assert r.returncode == EXIT_USAGE and "bad --window 'yesterday'" in r.stderr
    r = coordctl("frobnicate")
    assert r.returncode == EXIT_USAGE and "unknown command" in r.stderr
    r = coordctl("digest", "--council", "c01", "--country", "FR")
    assert r.returncode == EXIT_USAGE
    r = coordctl("status", "c01")
    assert r.returncode == EXIT_USAGE


def test_coordctl_digest_text_and_json(coordd, coordctl):
    push_known_records(coordd)
    r = coordctl("digest")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("All councils and countries, whole campaign; up to seq 6;")
    assert "6 records from 3 coordinating councils in 2 countries" in lines
    assert "3 rallies in 2 countries with 1,200 participants" in lines
    assert "1 letter by 1 coordinating council" in lines
    assert "  1 letter to a parliament" in lines
    assert "2 broadcast reports carried by 1,500 local sources" in lines
    assert "Newest:" in lines

    r = coordctl("digest", "--json")
    assert r.returncode == 0, r.stderr
    got = json_format.Parse(r.stdout, pb.Digest())
    with coordd.query() as q:
        want = q.digest()
    assert digest_lines(got) == digest_lines(want)
    assert got.last_seq == 6

    r = coordctl("digest", "--country", "FR", "--json")
    got = json_format.Parse(r.stdout, pb.Digest())
    assert got.scope.kind == pb.SCOPE_KIND_COUNTRY and got.scope.id == "FR"
    assert digest_lines(got)[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)][:3] == (2, 1200,
                                                                               {"FR": 2})
    r = coordctl("digest", "--council", "c02")
    assert r.returncode == 0
    assert "Council c02, whole campaign" in r.stdout and "1 rally in 1 country" in r.stdout

    r = coordctl("digest", "--window", "24h")
    assert r.returncode == 0 and "last 24 hours (" in r.stdout
    assert "3 rallies in 2 countries" in r.stdout
    r = coordctl("digest", "--window", "1h", "--json")
    assert json_format.Parse(r.stdout, pb.Digest()).window == pb.WINDOW_LAST_1H

    # From four days ago to yesterday (dates alone: 00:00 UTC): the letter only.
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 4 * 86400))
    until = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    r = coordctl("digest", "--window", f"{since}..{until}", "--json")
    assert r.returncode == 0, r.stderr
    got = json_format.Parse(r.stdout, pb.Digest())
    assert got.window == pb.WINDOW_RANGE and got.end - got.start == 3 * DAY_MS
    kinds = {(line.category, line.kind) for line in got.lines}
    assert kinds == {(pb.CATEGORY_LETTER, pb.RECIPIENT_KIND_PARLIAMENT)}
    r = coordctl("digest", "--window", f"{since}T00:00+02:00..{until}")
    assert r.returncode == 0 and "from " in r.stdout and "1 letter by" in r.stdout

    r = coordctl("digest", "--country", "fr")
    assert r.returncode == EXIT_BROKER
    assert "ISO 3166-1" in r.stderr and r.stdout == ""


def test_coordctl_history_status_stats(coordd, coordctl):
    envs, acks = push_known_records(coordd)
    r = coordctl("history", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["seq"] for row in rows] == [str(a.seq) for a in acks]
    for row, env in zip(rows, envs):
        assert row["council"] == env.council
        # The envelope is decoded, and it is the very record that was sent.
        got = json_format.ParseDict(row["envelope"], pb.Envelope())
        assert got.SerializeToString() == env.SerializeToString()
    r = coordctl("history", "--after", "2", "--limit", "3")
    assert r.returncode == 0
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["3", "4", "5"]
    r = coordctl("history", "--council", "c02", "--json")
    assert [json.loads(x)["council"] for x in r.stdout.splitlines()] == ["c02"] * 3

    r = coordctl("status", "c01", envs[0].msg_id)
    assert r.returncode == 0 and f"revision 1 at seq {acks[0].seq}" in r.stdout
    r = coordctl("status", "c01", envs[0].msg_id, "--json")
    got = json.loads(r.stdout)
    assert got["found"] is True and got["item"]["envelope"]["msgId"] == envs[0].msg_id
    r = coordctl("status", "c01", "nope")
    assert r.returncode == 0 and "not found" in r.stdout

    r = coordctl("stats")
    assert r.returncode == 0, r.stderr
    assert "store: 6 items, 6 records, last seq 6" in r.stdout
    assert "6 accepted" in r.stdout
    r = coordctl("stats", "--json")
    st = json_format.Parse(r.stdout, pb.Stats())
    assert st.last_seq == 6 and st.accepted == 6 and st.version


def test_coordctl_unreachable_broker_fails_within_the_timeout(coordctl, tmp_path):
    t0 = time.monotonic()
    r = coordctl("--timeout", "1", "stats", endpoint=f"ipc://{tmp_path}/nobody.sock")
    elapsed = time.monotonic() - t0
    assert r.returncode == EXIT_UNREACHABLE
    assert "no answer from" in r.stderr and "within 1 s" in r.stderr
    assert elapsed < 5
    r = coordctl("--timeout", "0.5", "digest", endpoint="tcp://127.0.0.1:9")
    assert r.returncode == EXIT_UNREACHABLE


class Watch:
    """coord-watch running in the background, its stdout read line by line."""

    def __init__(self, binary, d, *args):
        self.proc = subprocess.Popen(
            [binary, "--publish", d.publish_endpoint, "--query", d.query_endpoint, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)

    def line(self, timeout=10):
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "coord-watch printed nothing in time"
        line = self.proc.stdout.readline()
        assert line, f"coord-watch ended: {self.proc.wait()} {self.proc.stderr.read()}"
        return json.loads(line)

    def wait(self, timeout=20):
        status = self.proc.wait(timeout)
        return status, self.proc.stdout.read(), self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def set_of(update):
    return [json_format.ParseDict(d, pb.Digest()) for d in update["digests"]]


def test_watch_fetches_first_then_applies_live_updates(coordd_factory, watch_bin):
    d = coordd_factory(overrides={"digest": {"publish_interval_ms": 200}})
    push_known_records(d)
    w = Watch(watch_bin, d, "--json", "--count", "3", "--timeout", "10")
    try:
        first = w.line()
        assert first["topic"] == "digest/all/" and first["source"] == "query"
        assert first["lastSeq"] == "6"
        ds = set_of(first)
        assert [x.window for x in ds] == [pb.WINDOW_ALL, pb.WINDOW_LAST_24H, pb.WINDOW_LAST_1H]
        assert digest_lines(ds[0])[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)][0] == 3
        assert first["updatedAt"].endswith("Z")
        with d.council("c05") as c:
            expect_ack(c.request(c.env("event", country="RU")), ACCEPTED)
        second = w.line()
        assert second["source"] == "live" and second["lastSeq"] == "7"
        # Live sets carry the distinct counts and the total line, never the lists.
        whole = second["digests"][0]
        rally = set_of(second)[0].lines[0]
        assert (rally.category, rally.kind) == (pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)
        assert (rally.count, rally.distinct_countries, rally.distinct_councils) == (4, 3, 3)
        assert all("countries" not in line and "councils" not in line
                   for line in whole["lines"]), whole
        assert whole["total"]["count"] == "7" and whole["total"]["distinctCouncils"] == 4
        with d.council("c05") as c:
            expect_ack(c.request(c.env("petition")), ACCEPTED)
        third = w.line()
        assert third["source"] == "live" and third["prevSeq"] == "7"
        status, _, err = w.wait()
        assert status == 0, err
    finally:
        w.kill()


def test_watch_refetches_after_a_broker_restart(coordd_factory, watch_bin):
    d = coordd_factory(overrides={"digest": {"publish_interval_ms": 200}})
    push_known_records(d)
    w = Watch(watch_bin, d, "--json", "--country", "FR", "--timeout", "20")
    try:
        first = w.line()
        assert first["topic"] == "digest/country/FR/" and first["source"] == "query"
        d.restart()
        with d.council("c01") as c:
            expect_ack(c.request(c.env("event", country="FR")), ACCEPTED)
        # The reconnect makes the watcher fetch again from the query socket (a live set
        # alone would not tell it what it missed while the broker was down); it ends at
        # the new record, never stuck behind it.
        deadline = time.monotonic() + 20
        sources = []
        while True:
            u = w.line(timeout=max(0.1, deadline - time.monotonic()))
            sources.append(u["source"])
            if u["lastSeq"] == "7":
                break
        assert "query" in sources, sources
        assert digest_lines(set_of(u)[0])[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)][0] == 3
    finally:
        w.kill()


def test_watch_text_shows_sentences_and_time(coordd_factory, watch_bin):
    d = coordd_factory()
    push_known_records(d)
    w = Watch(watch_bin, d, "--count", "1", "--council", "c01")
    status, out, err = w.wait()
    assert status == 0, err
    assert out.startswith("== digest/council/c01/ updated ")
    assert "(query) ==" in out.splitlines()[0]
    assert "Whole campaign:\n  2 records from 1 coordinating council in 1 country\n" in out
    assert "  2 rallies in 1 country with 1,200 participants\n" in out
    assert "Last 24 hours:" in out and "Last hour:" in out


def test_watch_unreachable_broker_and_usage(watch_bin, tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([watch_bin, "--publish", f"ipc://{tmp_path}/p.sock", "--query",
                        f"ipc://{tmp_path}/q.sock", "--timeout", "1"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == EXIT_UNREACHABLE
    assert "no answer from the query socket" in r.stderr
    assert time.monotonic() - t0 < 5
    r = subprocess.run([watch_bin, "--help"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "--count" in r.stdout and "Exit status" in r.stdout
    r = subprocess.run([watch_bin, "--council", "c01", "--country", "FR"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == EXIT_USAGE


def test_watch_exits_on_interrupt(coordd, watch_bin):
    import signal
    w = Watch(watch_bin, coordd, "--json")
    try:
        w.line()
        w.proc.send_signal(signal.SIGINT)
        status, _, err = w.wait(10)
        assert status == 0, err
    finally:
        w.kill()


def test_watch_live_sentences_come_from_distinct_counts(coordd_factory, watch_bin):
    """A live update carries no CodeCount lists; its sentences, with distinct counts across
    lines (all records, all letters), read as those of the query answer."""
    d = coordd_factory(overrides={"digest": {"publish_interval_ms": 50}})
    push_known_records(d)
    w = Watch(watch_bin, d, "--timeout", "20")
    lines = []

    def read():
        for line in w.proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text_until(pred, what):
        deadline = time.monotonic() + 20
        while not pred("".join(lines)):
            assert time.monotonic() < deadline, f"{what}: {''.join(lines)}"
            time.sleep(0.02)
        return "".join(lines)

    try:
        text_until(lambda t: "(query) ==" in t and "Last hour:" in t, "no first update")
        recent = now_ms() - 3_600_000
        envs = [gen_envelope("event", council="c04", country="IT", participants=5, date=recent),
                gen_envelope("letter", council="c04", sent_at=recent,
                             recipient_kind=pb.RECIPIENT_KIND_HEAD_OF_STATE),
                gen_envelope("letter", council="c03", sent_at=recent,
                             recipient_kind=pb.RECIPIENT_KIND_HEAD_OF_STATE)]
        for env in envs:
            with d.council(env.council) as c:
                expect_ack(c.request(env), ACCEPTED)
        # The live update that counts all nine records (the three may come in more than
        # one publication): its whole-campaign block.
        whole_re = re.compile(r"\(live\) ==\nWhole campaign:\n(  9 records.*?)Last 24 hours:",
                              re.S)
        whole = whole_re.search(text_until(whole_re.search, "no live update with 9 records"))
        whole = "Whole campaign:\n" + whole.group(1)
    finally:
        w.kill()
        reader.join(timeout=10)
    assert "  9 records from 4 coordinating councils in " in whole
    assert "  4 rallies in 3 countries with 1,205 participants\n" in whole
    assert "  3 letters by 2 coordinating councils\n" in whole
    assert "    2 letters to heads of state\n" in whole
    r = subprocess.run([tool("coordctl", "COORDCTL_BIN"), "--endpoint", d.query_endpoint,
                        "digest"], capture_output=True, text=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    want = [line for line in r.stdout.splitlines()[1:] if line]
    want = want[:want.index("Newest:")] if "Newest:" in want else want
    got = [line[2:] for line in whole.splitlines()[1:] if line.strip()]
    got = got[:got.index("Newest:")] if "Newest:" in got else got
    assert got == want and len(got) >= 5, (got, want)
