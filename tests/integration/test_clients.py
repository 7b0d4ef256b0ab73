"""The council clients against the real daemon: libcoord through coord-push and the
example program, and the Python client (clients/python/coordclient.py).

What must hold whatever goes wrong: a record is stored exactly once. The broker is down
while a council pushes; the client is killed with SIGKILL mid-import and run again; the
broker is killed with SIGKILL and restarted mid-import. Each time the store is checked
directly (coordlib.Store): every row once, no (council, msg_id, revision) twice.

Environment (meson sets them): COORD_PUSH_BIN, COORD_EXAMPLE_BIN, LIBCOORD_SO, and
COORD_PYCLIENT_DIR (clients/python). Nothing sleeps: progress is read from coord-push's
stderr lines ("queued N records", "answered N of M"), each wait with a timeout.
"""

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, DUPLICATE, REJECTED, check_store_invariants, digest_lines,
                      live_records, recount)

pytestmark = pytest.mark.local_only

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD = REPO / "build"
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def _bin(var, default):
    path = os.environ.get(var) or str(BUILD / default)
    if not os.access(path, os.X_OK):
        pytest.skip(f"{var}: {path} not built")
    return path


@pytest.fixture
def push_bin():
    return _bin("COORD_PUSH_BIN", "clients/coord-push")


def _child_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "halt_on_error=1:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    for k in ("COORD_ENDPOINT", "COORD_COUNCIL", "COORD_OUTBOX"):
        env.pop(k, None)
    return env


class Proc:
    """A client process whose stderr lines are read by a thread, so that a test can wait
    for one (with a timeout) while the process runs."""

    def __init__(self, argv):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_child_env())
        self.lines = queue.Queue()
        self.err = []
        self.out = None
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pred, timeout=30.0):
        """The first stderr line with pred(line) true; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout} s; "
                                     f"stderr:\n{''.join(self.err)}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{self.argv[0]} ended first (status {self.p.wait()}); "
                                     f"stderr:\n{''.join(self.err)}")
            if pred(line):
                return line

    def finish(self, timeout=60.0):
        try:
            self.out = self.p.stdout.read()
            status = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise
        self._t.join(10)
        stderr = "".join(self.err)
        found = [m for m in SANITIZER_MARKERS if m in stderr]
        assert not found, f"{found} in stderr of {' '.join(self.argv)}:\n{stderr}"
        return status

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self.p.stdout.close()
        self._t.join(10)


def run(argv, timeout=60.0):
    """Run a client to the end: (status, stdout, stderr); fails on a sanitizer report."""
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, env=_child_env())
    found = [m for m in SANITIZER_MARKERS if m in r.stderr]
    assert not found, f"{found} in stderr of {' '.join(argv)}:\n{r.stderr}"
    return r.returncode, r.stdout, r.stderr


def push_argv(push_bin, daemon, outbox, council="c01", *more):
    return [push_bin, "--endpoint", daemon.endpoint, "--council", council, "--outbox",
            str(outbox), *more]


HEADER = "category,kind,country,city,date,title,participants,languages\n"


def event_rows(n, tag, bad=None):
    """CSV text of n event rows (line 1 is the header, row i is on line i + 2). `bad` maps
    a row index to {column: value} overrides."""
    out = [HEADER]
    for i in range(n):
        row = {"category": "event", "kind": "rally", "country": "DE", "city": "Berlin",
               "date": f"2020-{1 + i % 12:02d}-{1 + i % 28:02d}", "title": f"{tag} rally {i}",
               "participants": str(i), "languages": "de;hy"}
        row.update((bad or {}).get(i, {}))
        out.append(",".join(row[k] for k in HEADER.strip().split(",")) + "\n")
    return "".join(out)


def stored_envelopes(daemon):
    with daemon.store() as s:
        by_seq, stored, index = check_store_invariants(s)
        return [env for _it, env in by_seq.values()]


def titles_once(envs, tag, n, council="c01"):
    """Every "<tag> rally i" for i < n is stored exactly once (revision 1)."""
    titles = collections.Counter(e.event.title for e in envs
                                 if e.council == council and e.event.title.startswith(tag + " "))
    want = {f"{tag} rally {i}" for i in range(n)}
    missing = want - set(titles)
    twice = {t: c for t, c in titles.items() if c != 1}
    assert not missing, f"{len(missing)} rows never stored, e.g. {sorted(missing)[:5]}"
    assert not twice, f"rows stored more than once: {dict(list(twice.items())[:5])}"
    assert set(titles) == want


def answered(line):
    """(done, total) from "coord-push: answered N of M", else None."""
    if "answered" not in line:
        return None
    words = line.replace("/", " of ").split()
    try:
        i = words.index("answered")
        return int(words[i + 1]), int(words[i + 3])
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------
# libcoord through coord-push

def test_broker_down_while_council_pushes_5000_then_all_arrive_once(coordd_factory, push_bin,
                                                                    tmp_path):
    d = coordd_factory(start=False)
    csv = tmp_path / "5000.csv"
    csv.write_text(event_rows(5000, "down"))
    outbox = tmp_path / "outbox"
    p = Proc(push_argv(push_bin, d, outbox, "c01", "--timeout", "60", "--backoff-max", "500",
                       "import", str(csv)))
    p.wait_line(lambda ln: "queued 5000 records" in ln)
    # Nothing can have been answered: the broker is not running. All 5000 wait on disk.
    status, out, _ = run(push_argv(push_bin, d, outbox, "c01", "--json", "outbox"))
    assert status == 0
    listing = json.loads(out)
    assert len(listing["waiting"]) == 5000 and listing["rejected"] == []
    d.start()
    assert p.finish(120) == 0, p.out + "".join(p.err)
    assert "accepted 5000, duplicate 0, rejected 0, waiting 0" in p.out
    envs = stored_envelopes(d)
    assert len(envs) == 5000
    titles_once(envs, "down", 5000)
    status, out, _ = run(push_argv(push_bin, d, outbox, "c01", "outbox"))
    assert status == 0 and out.startswith("0 waiting, 0 rejected")


def test_client_killed_mid_import_then_rerun_stores_each_row_once(coordd_factory, push_bin,
                                                                  tmp_path):
    d = coordd_factory()
    n = 3000
    csv = tmp_path / "kill.csv"
    csv.write_text(event_rows(n, "kill"))
    outbox = tmp_path / "outbox"
    # A narrow window makes the import take long enough to be killed in the middle.
    p = Proc(push_argv(push_bin, d, outbox, "c01", "--max-in-flight", "2", "import", str(csv)))
    p.wait_line(lambda ln: (answered(ln) or (0, 0))[0] > 0)
    p.kill9()
    with d.store() as s:
        stored_before = s.item_count()
    assert 0 < stored_before < n, f"killed too late: {stored_before} of {n} already stored"

    status, out, err = run(push_argv(push_bin, d, outbox, "c01", "--json", "import", str(csv)))
    assert status == 0, out + err
    result = json.loads(out)
    assert result["invalid"] == [] and result["rejected"] == [] and result["waiting"] == 0
    assert result["accepted"] + result["duplicate"] == n
    # The broker may still have committed what the dead client had in flight.
    assert result["accepted"] <= n - stored_before
    titles_once(stored_envelopes(d), "kill", n)


def test_broker_killed_and_restarted_mid_import_loses_and_doubles_nothing(coordd_factory,
                                                                          push_bin, tmp_path):
    d = coordd_factory()
    n = 3000
    csv = tmp_path / "crash.csv"
    csv.write_text(event_rows(n, "crash"))
    outbox = tmp_path / "outbox"
    p = Proc(push_argv(push_bin, d, outbox, "c01", "--max-in-flight", "8", "--backoff-max",
                       "500", "--timeout", "60", "import", str(csv)))
    p.wait_line(lambda ln: (answered(ln) or (0, 0))[0] > 0)
    assert d.kill9() == -signal.SIGKILL
    with d.store(lock=False) as s:
        stored_before = s.item_count()
    assert 0 < stored_before < n, f"killed too late: {stored_before} of {n} already stored"
    d.start()
    assert p.finish(120) == 0, p.out + "".join(p.err)
    assert "waiting 0" in p.out
    envs = stored_envelopes(d)
    assert len(envs) == n
    titles_once(envs, "crash", n)


BAD_ROWS = {
    # row index -> overrides; the row sits on line index + 2
    99: {"country": "XX"},
    500: {"date": "2020-02-30"},
    899: {"title": ""},
}
BAD_LINES = {101: "country", 502: "date", 901: "title"}


def test_csv_with_3_bad_rows_names_them_and_sends_the_good_ones(coordd_factory, push_bin,
                                                                tmp_path):
    d = coordd_factory()
    csv = tmp_path / "bad.csv"
    csv.write_text(event_rows(1000, "bad", BAD_ROWS))
    outbox = tmp_path / "outbox"
    status, out, err = run(push_argv(push_bin, d, outbox, "c01", "--json", "import", str(csv)))
    assert status == 1, out + err
    result = json.loads(out)
    assert {b["line"]: b["field"] for b in result["invalid"]} == BAD_LINES
    for line, field in BAD_LINES.items():
        assert f"{csv}:{line}: {field}: " in err
    assert result["valid"] == 997 and result["accepted"] == 997 and result["waiting"] == 0
    envs = stored_envelopes(d)
    assert len(envs) == 997
    titles = {e.event.title for e in envs}
    assert "bad rally 99" not in titles and "bad rally 500" not in titles

    # Fix the rows and run the same import again: the good rows are not stored twice.
    csv.write_text(event_rows(1000, "bad"))
    status, out, err = run(push_argv(push_bin, d, outbox, "c01", "--json", "import", str(csv)))
    assert status == 0, out + err
    result = json.loads(out)
    assert (result["accepted"], result["duplicate"]) == (3, 997)
    titles_once(stored_envelopes(d), "bad", 1000)


def test_csv_with_bad_rows_and_all_or_nothing_sends_nothing(coordd_factory, push_bin, tmp_path):
    d = coordd_factory()
    csv = tmp_path / "bad.csv"
    csv.write_text(event_rows(1000, "aon", BAD_ROWS))
    status, out, err = run(push_argv(push_bin, d, tmp_path / "outbox", "c01", "import",
                                     "--all-or-nothing", str(csv)))
    assert status == 1, out + err
    assert "nothing sent (--all-or-nothing" in out
    for line, field in BAD_LINES.items():
        assert f"{csv}:{line}: {field}: " in err
    with d.store() as s:
        assert s.item_count() == 0
    status, out, _ = run(push_argv(push_bin, d, tmp_path / "outbox", "c01", "outbox"))
    assert out.startswith("0 waiting, 0 rejected")


def test_jsonl_import_and_rejections_are_kept_in_the_outbox(coordd_factory, push_bin, tmp_path):
    d = coordd_factory()
    lines = [
        {"event": {"kind": "EVENT_KIND_RALLY", "country": "FR", "date": "1601769600000",
                   "title": "JSON rally"}},
        {"msgId": "letter-1", "letter": {"recipientKind": "RECIPIENT_KIND_PARLIAMENT",
                                         "recipient": "Bundestag", "recipientCountry": "DE",
                                         "language": "de", "sentAt": "1601856000000"}},
        {"council": "c02", "event": {"kind": 1, "country": "FR", "date": "1601769600000",
                                     "title": "Another council"}},
        {"event": {"kind": "EVENT_KIND_RALLY", "country": "FR", "date": "1601769600000",
                   "title": "x", "colour": "red"}},
        # Valid here, refused by the broker: a retraction of a record it never stored.
        {"msgId": "never-stored", "retraction": {"reason": "test"}},
    ]
    f = tmp_path / "records.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    outbox = tmp_path / "outbox"
    status, out, err = run(push_argv(push_bin, d, outbox, "c01", "--json", "import", str(f)))
    assert status == 1, out + err
    result = json.loads(out)
    assert [(b["line"], b["field"]) for b in result["invalid"]] == [(3, "council"),
                                                                   (4, "event.colour")]
    assert result["accepted"] == 2
    assert [(r["line"], r["msgId"], r["reason"]) for r in result["rejected"]] == [
        (5, "never-stored", "UNKNOWN_RECORD")]

    status, out, _ = run(push_argv(push_bin, d, outbox, "c01", "--json", "outbox"))
    listing = json.loads(out)
    assert listing["waiting"] == []
    [rej] = listing["rejected"]
    assert (rej["msgId"], rej["revision"], rej["reason"]) == ("never-stored", 2, "UNKNOWN_RECORD")
    assert rej["envelope"]["retraction"] == {"reason": "test"}
    status, _, _ = run(push_argv(push_bin, d, outbox, "c01", "outbox", "forget", "never-stored",
                                 "2"))
    assert status == 0
    status, out, _ = run(push_argv(push_bin, d, outbox, "c01", "outbox"))
    assert out.startswith("0 waiting, 0 rejected")


def test_one_record_from_flags_then_correct_and_retract(coordd_factory, push_bin, tmp_path):
    d = coordd_factory()
    base = push_argv(push_bin, d, tmp_path / "outbox", "c02")
    flags = ["--kind", "rally", "--country", "DE", "--city", "Berlin", "--date", "2020-10-04",
             "--title", "Rally at the Gate", "--language", "de", "--language", "hy"]
    status, out, err = run(base + ["--json", "event"] + flags)
    assert status == 0, out + err
    first = json.loads(out)
    assert first["status"] == "ACCEPTED" and first["msgId"].startswith("h-")
    # The same flags again (spelled differently): the same record, not a second one.
    status, out, _ = run(base + ["event", "--kind", "RALLY", "--country", " DE ", "--city",
                                 "Berlin", "--date", "2020-10-04T00:00:00Z", "--title",
                                 "Rally at the Gate", "--languages", "de;hy", "--json"])
    again = json.loads(out)
    assert (status, again["status"], again["msgId"]) == (0, "DUPLICATE", first["msgId"])

    status, out, _ = run(base + ["correct", first["msgId"], "--revision", "2", "event", "--kind",
                                 "rally", "--country", "DE", "--date", "2020-10-04", "--title",
                                 "Rally at the Gate (corrected)"])
    assert status == 0 and out.startswith("ACCEPTED event " + first["msgId"] + " revision 2")
    status, out, err = run(base + ["retract", first["msgId"], "--revision", "3", "--reason",
                                   "cancelled"])
    assert status == 0 and out.startswith("ACCEPTED retraction"), out + err
    status, out, err = run(base + ["event", "--kind", "rally", "--country", "de", "--date",
                                   "2020-10-04", "--title", "x"])
    assert status == 1
    assert "--country: 'de' is not an ISO 3166-1 alpha-2 code (use upper case)" in err
    status, _, err = run(base + ["event", "--colour", "red"])
    assert status == 2 and "--colour is not a field of event" in err
    status, _, err = run(base + ["correct", first["msgId"], "event", "--title", "x"])
    assert status == 2 and "--revision" in err
    with d.store() as s:
        entry = s.index("c02", first["msgId"])
        assert entry.revision == 3 and entry.retracted


def test_no_broker_answer_times_out_and_the_record_waits(coordd_factory, push_bin, tmp_path):
    d = coordd_factory(start=False)
    outbox = tmp_path / "outbox"
    base = push_argv(push_bin, d, outbox, "c03")
    status, out, err = run(base + ["--timeout", "0.5", "media", "--kind", "article", "--outlet",
                                   "Le Monde", "--country", "FR", "--language", "fr", "--date",
                                   "2020-10-04"])
    assert status == 3, out + err
    assert out.startswith("WAITING media h-") and "waits in the outbox" in err
    d.start()
    status, out, err = run(base + ["flush"])
    assert (status, out) == (0, "accepted 1, duplicate 0, rejected 0, waiting 0\n"), err
    with d.store() as s:
        assert s.item_count() == 1


def test_help_everywhere(push_bin):
    for argv in (["--help"], ["help"], ["event", "--help"], ["letter", "--help"],
                 ["retract", "--help"], ["import", "--help"], ["outbox", "--help"],
                 ["--help", "petition"]):
        status, out, err = run([push_bin] + argv)
        assert status == 0 and out.startswith("Usage: coord-push"), (argv, out, err)
    status, out, _ = run([push_bin, "letter", "--help"])
    assert "--recipient-kind" in out and "head-of-state" in out
    status, _, err = run([push_bin, "frobnicate"])
    assert status == 2 and "unknown command" in err


def test_the_example_program_pushes_its_records(coordd_factory, tmp_path):
    example = _bin("COORD_EXAMPLE_BIN", "clients/libcoord/coord-example")
    d = coordd_factory(overrides={"council.fr": {"name": "France", "country": "FR"}})
    status, out, err = run([example, d.endpoint, "fr", str(tmp_path / "outbox")])
    assert status == 0, out + err
    assert out.count("ACCEPTED") == 2
    status, out, err = run([example, d.endpoint, "fr", str(tmp_path / "outbox")])
    assert status == 0 and out.count("DUPLICATE") == 2


def default_councils():
    """{council id: country} of config/coordd.conf, the config the examples are for."""
    councils, current = {}, None
    for line in (REPO / "config" / "coordd.conf").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line[len("[council."):-1] if line.startswith("[council.") else None
        elif current and line.startswith("country"):
            councils[current] = line.split("=", 1)[1].strip()
    return councils


def test_config_examples_import_cleanly(coordd_factory, push_bin, tmp_path):
    """config/examples/ import without a bad row into the default config's councils."""
    councils = default_councils()
    assert "fr" in councils
    d = coordd_factory(overrides={f"council.{c}": {"name": c, "country": cc}
                                  for c, cc in councils.items()})
    examples = sorted((REPO / "config" / "examples").iterdir())
    assert {f.suffix for f in examples} >= {".csv", ".jsonl"}
    total = 0
    for f in examples:
        status, out, err = run(push_argv(push_bin, d, tmp_path / "outbox", "fr", "--json",
                                         "import", str(f)))
        assert status == 0, f"{f}: {out}{err}"
        result = json.loads(out)
        assert result["invalid"] == [] and result["rejected"] == [] and result["waiting"] == 0
        assert result["accepted"] == result["valid"] > 0
        total += result["accepted"]
    with d.store() as s:
        assert s.item_count() == total


def test_libcoord_exports_only_coord_names():
    lib = os.environ.get("LIBCOORD_SO")
    if not lib or not shutil.which("nm"):
        pytest.skip("LIBCOORD_SO or nm not available")
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()]
    bad = [n for n in names if not n.startswith("coord_") or n.startswith("coord__")]
    assert bad == ["COORD_0"], f"libcoord exports {bad}"
    assert {"coord_client_new", "coord_push", "coord_flush", "coord_strerror"} <= set(names)


def test_docs_show_the_example_program_as_it_is():
    doc = (REPO / "docs" / "CLIENTS.md").read_text()
    start = doc.index("```c\n") + len("```c\n")
    block = doc[start:doc.index("```", start)]
    assert block == (REPO / "clients" / "libcoord" / "example.c").read_text()


def test_pkg_config_builds_a_program_against_libcoord(coordd_factory, tmp_path):
    """`pkg-config --cflags --libs libcoord` (the build's uninstalled .pc file) is all a
    council's program needs."""
    lib = os.environ.get("LIBCOORD_SO")
    cc = shutil.which("cc")
    if not lib or not cc or not shutil.which("pkg-config"):
        pytest.skip("LIBCOORD_SO, cc or pkg-config not available")
    if "libasan" in subprocess.run(["ldd", lib], capture_output=True, text=True).stdout:
        pytest.skip("a sanitizer build: a plain program cannot link it")
    build = Path(lib).resolve().parent.parent.parent
    env = dict(os.environ, PKG_CONFIG_PATH=str(build / "meson-uninstalled"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libcoord"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / "example"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-o", str(exe),
                    str(REPO / "clients" / "libcoord" / "example.c")] + flags, check=True)
    d = coordd_factory(overrides={"council.fr": {"name": "France", "country": "FR"}})
    r = subprocess.run([str(exe), d.endpoint, "fr", str(tmp_path / "outbox")],
                       env=dict(os.environ, LD_LIBRARY_PATH=str(Path(lib).parent)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count("ACCEPTED") == 2, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------
# The Python client, and both clients on one broker

def _pyclient():
    d = os.environ.get("COORD_PYCLIENT_DIR") or str(REPO / "clients" / "python")
    if d not in sys.path:
        sys.path.insert(0, d)
    import coordclient
    return coordclient


def test_python_client_pipelines_and_correlates_acks(coordd):
    cc = _pyclient()
    envs = [cc.record("c04", "letter", recipient_kind="member of parliament",
                      recipient=f"MP {i}", recipient_country="GB", language="en",
                      sent_at="2020-10-06", channel="email") for i in range(2000)]
    bad = cc.record("c04", "event", kind="rally", country="XX", date="2020-10-04", title="x")
    seen = []
    with cc.Client(coordd.endpoint, "c04", max_in_flight=64, on_ack=seen.append) as client:
        for e in envs[:1000] + [bad] + envs[1000:]:
            client.push(e)
        results = client.flush(timeout=60)
        assert client.waiting == 0
    assert len(results) == 2001 and len(seen) == 2001
    assert all(results[cc.key(e)].status == ACCEPTED for e in envs)
    assert results[cc.key(bad)].status == REJECTED
    assert cc.reason_name(results[cc.key(bad)].reason) == "INVALID_COUNTRY"
    with coordd.store() as s:
        assert s.item_count() == 2000


def test_python_client_resends_after_the_broker_restarts(coordd_factory):
    cc = _pyclient()
    d = coordd_factory(start=False)
    envs = [cc.record("c05", "statement", organisation=f"Org {i}", country="RU",
                      languages=["ru", "hy"], date="2020-10-07") for i in range(300)]
    with cc.Client(d.endpoint, "c05", max_in_flight=32, ack_timeout=5.0,
                   backoff_max=0.5) as client:
        for e in envs:
            client.push(e, timeout=0)  # nothing is connected: queue without waiting
        assert client.waiting == 300
        d.start()
        client.flush(timeout=60)
    with d.store() as s:
        assert s.item_count() == 300


def test_python_and_c_clients_push_to_one_broker_and_read_one_digest(coordd_factory, push_bin,
                                                                    tmp_path):
    cc = _pyclient()
    d = coordd_factory()
    csv = tmp_path / "c.csv"
    csv.write_text(event_rows(40, "both"))
    status, out, err = run(push_argv(push_bin, d, tmp_path / "outbox", "c01", "import",
                                     str(csv)))
    assert status == 0, out + err
    # The Python client derives the same msg_ids: a row the C client sent is a DUPLICATE.
    same = cc.record("c01", "event", kind="rally", country="DE", city="Berlin", date="2020-01-01",
                     title="both rally 0", participants=0, languages="de;hy")
    py = [cc.record("c02", "media", kind="broadcast", outlet=f"TV {i}", country="FR",
                    language="fr", date="2020-10-08", local_sources=10 + i) for i in range(20)]
    with cc.Client(d.endpoint, None) as client:
        for e in [same] + py:
            client.push(e)
        results = client.flush(timeout=30)
    assert results[cc.key(same)].status == DUPLICATE
    assert all(results[cc.key(e)].status == ACCEPTED for e in py)

    live = live_records(stored_envelopes(d))
    assert len(live) == 60
    with d.query() as q:
        whole = digest_lines(q.digest())
        assert whole == recount(live)
        assert whole[(pb.CATEGORY_EVENT, pb.EVENT_KIND_RALLY)][4] == {"c01": 40}
        assert whole[(pb.CATEGORY_MEDIA, pb.MEDIA_KIND_BROADCAST)][:2] == (20, sum(
            10 + i for i in range(20)))
        for council in ("c01", "c02"):
            assert digest_lines(q.digest(pb.SCOPE_KIND_COUNCIL, council)) == recount(
                live, pb.SCOPE_KIND_COUNCIL, council)


def test_python_example_pushes_a_record(coordd):
    script = REPO / "clients" / "python" / "coord_push_example.py"
    argv = ["/usr/bin/python3", str(script), "--endpoint", coordd.endpoint, "--council", "c06",
            "event", "--kind", "press-conference", "--country", "LB", "--city", "Beirut",
            "--date", "2020-10-09", "--title", "Press conference"]
    status, out, err = run(argv)
    assert status == 0 and out.startswith("ACCEPTED"), out + err
    status, out, err = run(argv)
    assert status == 0 and out.startswith("DUPLICATE"), out + err


def test_coordctl_export_is_what_coord_push_import_reads(coordd_factory, push_bin, tmp_path):
    """An export from one broker, imported into another, stores the same records: every
    revision in seq order (corrections and retractions included), decoded equal."""
    coordctl = _bin("COORDCTL_BIN", "clients/coordctl")
    src = coordd_factory("src")
    base = push_argv(push_bin, src, tmp_path / "outbox-src", "c02")
    rows = tmp_path / "in.csv"
    rows.write_text(event_rows(40, "export"))
    status, out, err = run(base + ["import", str(rows)])
    assert status == 0, out + err
    envs = [e for e in stored_envelopes(src) if e.council == "c02"]
    status, out, err = run(base + ["correct", envs[0].msg_id, "--revision", "2", "event",
                                   "--kind", "rally", "--country", "FR", "--date", "2020-10-04",
                                   "--title", "moved to Paris"])
    assert status == 0, out + err
    status, out, err = run(base + ["retract", envs[1].msg_id, "--reason", "cancelled"])
    assert status == 0, out + err

    status, exported, err = run([coordctl, "--endpoint", src.query_endpoint, "export",
                                 "--council", "c02"])
    assert status == 0, err
    lines = exported.splitlines()
    assert len(lines) == 42
    dump = tmp_path / "export.jsonl"
    dump.write_text(exported)

    dst = coordd_factory("dst")
    status, out, err = run(push_argv(push_bin, dst, tmp_path / "outbox-dst", "c02")
                           + ["import", str(dump)])
    assert status == 0, out + err
    def records(d):
        return [(e.msg_id, e.revision, e.WhichOneof("body"), e.SerializeToString())
                for e in stored_envelopes(d)]
    assert records(dst) == records(src)
