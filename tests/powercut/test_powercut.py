"""Power-loss proof (issue #9): simulated power cuts under load lose nothing acknowledged.

Each traced run starts the real coordd with powercut.so preloaded (a log of every write
and flush to the store's files), pushes a synthetic campaign from 11 councils in threads
(each ack recorded with the CLOCK_MONOTONIC time it was seen), and kill -9s the broker at
a random moment. Crash states are then rebuilt from the snapshot taken before the run and
the log (crashstate.py): at the end of the log and at random earlier points (just after or
during a commit, or anywhere), each in four modes (flushed, subset, torn, all). The real
broker starts on each state (real LMDB), and the checks are:

- the store opens (READY=1) and the broker stops cleanly (SIGTERM, exit 0);
- every record acknowledged before the cut is stored at the seq of its ack, byte for
  byte. Before the cut means: for the state at the end of the log, every ack of the run
  (the broker sent them all before it died); for a cut before record c, every ack seen
  at or before the time record c-1 completed;
- nothing is half there: items are 1..N without a gap, each is an Envelope some council
  sent, byte-identical, stored once; the index points at each record's latest stored
  revision (coordlib.check_store_invariants, reading LMDB directly) and the daemon's own
  `coordctl verify` agrees (records, index, aggregates);
- the digest aggregates (scope all, each council, last 24 h) equal a recount of the
  stored live records (coordlib.recount).

Runs chain: each starts on the store the previous kill -9 left. Identical crash states
are checked once. The negative control does the same with `[store] sync = none` (a quarter
of the runs and cuts) and must find an acknowledged record missing; otherwise the
simulator simulates nothing. The library and the builder have tests of their own at the
end of this file.

Environment: POWERCUT_RUNS (traced runs, default 4), POWERCUT_CUTS (cut points per run,
default 13), POWERCUT_RECORDS (campaign records per run, default 1500), POWERCUT_SEED
(default: random, printed), POWERCUT_FIGURES (a file to append the figures of each test to, one JSON line),
POWERCUT_SKIP (a reason to skip: set by meson in sanitizer builds).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import coord_pb2 as pb
import crashstate
import integration_conftest as itc
from coordlib import (ACCEPTED, COUNCIL_IDS, Campaign, Store, check_store_invariants,
                      digest_lines, live_records, recount)

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(bool(os.environ.get("POWERCUT_SKIP")),
                                reason=os.environ.get("POWERCUT_SKIP", ""))

RUNS = int(os.environ.get("POWERCUT_RUNS", "4"))
CUTS = int(os.environ.get("POWERCUT_CUTS", "13"))
RECORDS = int(os.environ.get("POWERCUT_RECORDS", "1500"))
SEED = int(os.environ.get("POWERCUT_SEED", str(random.SystemRandom().randrange(1 << 31))))
# The negative control grows with the main test, at a quarter of its size.
NEGATIVE_RUNS = max(1, RUNS // 4)
NEGATIVE_CUTS = max(3, CUTS // 4)


def lib_path():
    path = os.environ.get("POWERCUT_LIB") or str(
        HERE.parent.parent / "build" / "tests" / "powercut" / "libpowercut.so")
    if not os.path.exists(path):
        pytest.fail(f"powercut library {path!r} not found (set POWERCUT_LIB)")
    return path


def verify_path():
    path = os.environ.get("COORDCTL_BIN") or str(
        HERE.parent.parent / "build" / "clients" / "coordctl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"coordctl {path!r} not found (set COORDCTL_BIN)")
    return path


class Figures:
    def __init__(self, sync):
        self.sync = sync
        self.runs = 0
        self.cuts = 0
        self.states = 0            # distinct crash states checked
        self.duplicates = 0        # states identical to one already checked
        self.by_mode = {m: 0 for m in crashstate.MODES}
        # Over the distinct states: unflushed writes kept, dropped, and torn ones.
        self.writes = {"durable": 0, "kept": 0, "dropped": 0, "torn": 0}
        self.acks = 0              # acks received in traced runs
        self.acked_checked = 0     # (state, acked record) pairs checked
        self.lost = 0              # of those, missing or with other bytes
        self.states_losing = 0     # states with at least one lost record
        self.failed_open = 0       # states on which the broker did not start
        self.inconsistent = 0      # states failing the store, index or digest checks
        self.log_records = 0
        self.log_bytes = 0
        self.seconds = 0.0
        self.problems = []

    def as_dict(self):
        d = {k: v for k, v in vars(self).items() if k != "problems"}
        d["first_problems"] = self.problems[:5]
        return d


class Harness:
    """The state of one test: the chained store, what was sent and acked."""

    def __init__(self, tmp_path, sync, seed):
        self.tmp = tmp_path
        self.sync = sync
        self.rng = random.Random(seed)
        self.binary = itc.coordd_binary()
        self.lib = lib_path()
        self.verify = verify_path()
        self.sent = {}   # (council, msg_id, revision) -> Envelope bytes
        self.acked = {}  # (council, msg_id, revision) -> (seq, t_ns when seen)
        self.fig = Figures(sync)
        self.daemon = itc.Daemon(self.binary, tmp_path / "broker",
                                 overrides={"store": {"sync": sync}})
        self.n_checked = 0
        self.seen_states = set()

    # the traced runs ------------------------------------------------------------------
    def create_store(self):
        """A clean first start and stop, untraced: the store exists before the first run
        (the power-loss window of a brand-new store is not what this test covers)."""
        self.daemon.start()
        assert self.daemon.stop() == 0, self.daemon.stderr()

    def traced_run(self, run):
        """One traced run ending in kill -9. Returns (log path, snapshot dir, acks of this
        run as {key: (seq, t_ns)})."""
        d = self.daemon
        snap = self.tmp / f"snap{run}"
        shutil.copytree(d.state_dir, snap, ignore=shutil.ignore_patterns("lock.mdb"))
        log = self.tmp / f"run{run}.log"
        d.start(env={"LD_PRELOAD": self.lib, "POWERCUT_DIR": str(d.state_dir),
                     "POWERCUT_LOG": str(log)})

        campaign = Campaign(n_records=RECORDS, seed=self.rng.randrange(1 << 30),
                            prefix=f"pc{self.sync}{run}")
        sends = campaign.sends()
        for c, items in sends.items():
            for (msg_id, revision), data in items:
                self.sent[(c, msg_id, revision)] = data
        total = sum(len(v) for v in sends.values())
        kill_after = self.rng.randrange(total * 15 // 100, total * 75 // 100)
        # Small windows make small batches: many commits, so many cut points between them.
        window = self.rng.choice([4, 16, 64])

        cond = threading.Condition()
        run_acks = {}
        errors = []
        stop = threading.Event()

        def on_ack(council, ack):
            t = time.monotonic_ns()
            with cond:
                if ack.status == ACCEPTED:
                    run_acks[(council, ack.msg_id, ack.revision)] = (ack.seq, t)
                else:
                    errors.append(f"{council}: unexpected ack {ack}")
                if len(run_acks) >= kill_after:
                    cond.notify_all()

        def push(council, items):
            try:
                with d.council(council, timeout=60) as client:
                    client.push_all(items, window=window, idle_timeout=60, stop=stop,
                                    on_ack=lambda a: on_ack(council, a))
            except BaseException as e:  # noqa: BLE001 - reported below
                with cond:
                    errors.append(f"{council}: {e!r}")
                    cond.notify_all()

        threads = [threading.Thread(target=push, args=(c, items)) for c, items in sends.items()]
        for t in threads:
            t.start()
        try:
            with cond:
                reached = cond.wait_for(lambda: len(run_acks) >= kill_after or errors,
                                        timeout=120)
            assert not errors, errors[:3]
            assert reached, f"only {len(run_acks)} acks within 120 s"
            assert d.kill9() == -signal.SIGKILL
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not any(t.is_alive() for t in threads), "a council client did not stop"
        assert not errors, errors[:3]
        assert len(run_acks) < total, "the kill landed after the last ack"
        self.acked.update(run_acks)
        self.fig.runs += 1
        self.fig.acks += len(run_acks)
        return log, snap, run_acks

    def cut_points(self, log, n_cuts):
        """The end of the log, then points just after a commit's durable write, during
        one, or anywhere."""
        n = len(log)
        commits = [i for i, r in enumerate(log.records) if r.type == crashstate.SYNCWRITE]
        cuts = [n]
        for k in range(n_cuts - 1):
            if commits and k % 3 == 0:
                cuts.append(self.rng.choice(commits) + 1)  # just after a commit
            elif commits and k % 3 == 1:
                cuts.append(self.rng.choice(commits))      # its last write in flight
            else:
                cuts.append(self.rng.randrange(1, n + 1))
        return cuts

    # one crash state ----------------------------------------------------------------
    def check_state(self, log, snap, cut, mode, t_limit):
        """Build the crash state and check it. Returns the number of acked records lost,
        or None when the state duplicates one already checked."""
        self.n_checked += 1
        work = self.tmp / f"chk{self.n_checked}"
        state = work / "state"
        work.mkdir()
        info, digest = crashstate.build(log, str(snap), str(state), cut, mode,
                                        random.Random(self.rng.randrange(1 << 30)))
        if digest in self.seen_states:
            self.fig.duplicates += 1
            shutil.rmtree(work)
            return None
        self.seen_states.add(digest)
        self.fig.states += 1
        self.fig.by_mode[mode] += 1
        for k in self.fig.writes:
            self.fig.writes[k] += info[k]
        what = f"state {self.n_checked} ({info})"

        must = {k: v for k, v in self.acked.items() if v[1] <= t_limit}
        d = itc.Daemon(self.binary, work, state_dir=state)
        try:
            d.start()
        except itc.DaemonError as e:
            self.fig.failed_open += 1
            self.fig.problems.append(f"{what}: the broker did not start: {str(e)[-600:]}")
            # Count every required record as lost: none of them can be read.
            self.fig.acked_checked += len(must)
            self.fig.lost += len(must)
            self.fig.states_losing += 1 if must else 0
            d.cleanup()
            return len(must)

        lost, problems = 0, []
        try:
            with d.query(timeout=20) as q:
                items, _ = q.history_all()
                lost, problems = self.check_items(items, must)
                problems += self.check_digests(q, items)
            status = d.stop()
            if status != 0:
                problems.append(f"the broker exited {status} on SIGTERM")
            problems += self.check_store(state)
        except Exception as e:  # noqa: BLE001 - any failure is a finding about this state
            problems.append(f"{type(e).__name__}: {e}")
        problems += d.cleanup()
        self.fig.acked_checked += len(must)
        self.fig.lost += lost
        self.fig.states_losing += 1 if lost else 0
        if problems:
            self.fig.inconsistent += 1
            self.fig.problems.extend(f"{what}: {p}" for p in problems[:3])
        else:
            shutil.rmtree(work)
        return lost

    def check_items(self, items, must):
        problems = []
        seqs = [it.seq for it in items]
        if seqs != list(range(1, len(items) + 1)):
            problems.append(f"item seqs are not 1..{len(items)}")
        by_seq = {}
        stored = set()
        for it in items:
            env = pb.Envelope.FromString(it.envelope)
            key = (env.council, env.msg_id, env.revision)
            if self.sent.get(key) != it.envelope:
                problems.append(f"seq {it.seq}: {key} is not byte-identical to what was sent")
            if it.council != env.council:
                problems.append(f"seq {it.seq}: council {it.council!r} != {env.council!r}")
            if key in stored:
                problems.append(f"seq {it.seq}: {key} stored twice")
            stored.add(key)
            by_seq[it.seq] = key
        lost = [k for k, (seq, _t) in must.items() if by_seq.get(seq) != k]
        if lost:
            problems.append(f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:3]}")
        return len(lost), problems

    def check_digests(self, q, items):
        live = live_records(pb.Envelope.FromString(it.envelope) for it in items)
        problems = []
        scopes = [(pb.SCOPE_KIND_ALL, "")] + [(pb.SCOPE_KIND_COUNCIL, c) for c in COUNCIL_IDS]
        asks = [(k, s, pb.WINDOW_ALL) for k, s in scopes] + [
            (pb.SCOPE_KIND_ALL, "", pb.WINDOW_LAST_24H)]
        for kind, scope_id, window in asks:
            dg = q.digest(kind, scope_id, window)
            start, end = (None, None) if window == pb.WINDOW_ALL else (dg.start, dg.end)
            if digest_lines(dg) != recount(live, kind, scope_id, start, end):
                problems.append(f"digest {pb.ScopeKind.Name(kind)} {scope_id!r} "
                                f"{pb.Window.Name(window)} differs from the recount")
        return problems

    def check_store(self, state):
        problems = []
        try:
            with Store(state, lock=False) as store:
                check_store_invariants(store)
        except AssertionError as e:
            problems.append(f"store invariants: {e}")
        r = subprocess.run([self.verify, "verify", str(state)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            problems.append(f"coordctl verify exit {r.returncode}: {r.stdout}{r.stderr}")
        return problems

    # a whole test ---------------------------------------------------------------------
    def run(self, runs, cuts):
        start = time.monotonic()
        self.create_store()
        for run in range(runs):
            log_path, snap, run_acks = self.traced_run(run)
            log = crashstate.Log(log_path)
            self.fig.log_records += len(log)
            self.fig.log_bytes += os.path.getsize(log_path)
            for cut in self.cut_points(log, cuts):
                self.fig.cuts += 1
                # At the end of the log the power fails when the broker died: every ack
                # of the run was sent before that. Earlier, only acks seen by the time the
                # last record before the cut completed are surely before the cut.
                t_limit = float("inf") if cut == len(log) else log.records[cut - 1].t_ns
                for mode in crashstate.MODES:
                    self.check_state(log, snap, cut, mode, t_limit)
            shutil.rmtree(snap)
            os.unlink(log_path)
            self.fig.seconds = round(time.monotonic() - start, 1)
            progress(self.fig)
        self.fig.seconds = round(time.monotonic() - start, 1)
        return self.fig


def progress(fig):
    """After each traced run of a long test: the figures so far, in the figures file."""
    path = os.environ.get("POWERCUT_FIGURES")
    if path and RUNS > 4:
        with open(path, "a") as f:
            f.write(json.dumps({"seed": SEED, "partial": True, **fig.as_dict()},
                               sort_keys=True) + "\n")


def report(fig):
    line = json.dumps(fig.as_dict(), sort_keys=True)
    print(f"\npowercut figures (seed {SEED}): {line}")
    path = os.environ.get("POWERCUT_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"seed": SEED, **fig.as_dict()}, sort_keys=True) + "\n")


def test_power_cuts_lose_nothing_acknowledged(tmp_path):
    """sync = full: no crash state loses an acknowledged record, fails to open, or holds a
    half-written record, index entry or digest figure."""
    h = Harness(tmp_path, "full", SEED)
    try:
        fig = h.run(RUNS, CUTS)
    finally:
        problems = h.daemon.cleanup()
    report(fig)
    assert not problems, problems
    # CI (4 runs x 13 cuts) must check at least 50 distinct crash states.
    assert fig.states >= min(50, RUNS * CUTS), f"only {fig.states} distinct crash states"
    assert fig.acked_checked > 0, "no acknowledged record was ever checked"
    assert not fig.problems, (f"{len(fig.problems)} problems (seed {SEED}); first:\n"
                              + "\n".join(fig.problems[:5]))
    assert fig.lost == 0 and fig.failed_open == 0 and fig.inconsistent == 0


def test_negative_control_sync_none_loses_acknowledged_records(tmp_path):
    """sync = none (MDB_NOSYNC): the same simulation must find acknowledged records lost;
    if it finds none, the simulator is not simulating power cuts."""
    h = Harness(tmp_path, "none", SEED + 1)
    try:
        fig = h.run(NEGATIVE_RUNS, NEGATIVE_CUTS)
    finally:
        problems = h.daemon.cleanup()
    report(fig)
    assert not problems, problems
    assert fig.acked_checked > 0, "no acknowledged record was ever checked"
    assert fig.lost > 0, (f"sync = none lost no acknowledged record in {fig.states} crash "
                          f"states: the simulator is broken")


# ---------------------------------------------------------------------------------------
# The simulator itself: what the library records, and which states the builder makes.

TRACEE = r"""
import mmap, os, sys
d = sys.argv[1]
fd = os.open(os.path.join(d, "a"), os.O_RDWR | os.O_CREAT, 0o640)
os.write(fd, b"A" * 100)                      # write at 0
os.pwrite(fd, b"B" * 1000, 4096)              # pwrite past the end
os.lseek(fd, 200, os.SEEK_SET)
os.writev(fd, [b"C" * 10, b"D" * 20])         # writev at 200
os.fdatasync(fd)                              # flush a
dup = os.dup(fd)
os.pwritev(dup, [b"E" * 600], 8192)           # through a dup
os.ftruncate(fd, 9000)
os.close(fd)
os.pwrite(dup, b"F" * 5, 0)                   # the dup stays traced after close(fd)
os.fsync(dup)
m = mmap.mmap(dup, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
m.close()
os.close(dup)
s = os.open(os.path.join(d, "b"), os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o640)
os.pwrite(s, b"G" * 50, 0)                    # O_DSYNC: durable by itself
os.close(s)
u = os.open(os.path.join(d, "lock.mdb"), os.O_RDWR | os.O_CREAT, 0o640)
os.write(u, b"H")                             # lock.mdb: not traced
os.close(u)
o = os.open(os.path.join(os.path.dirname(d), "outside"), os.O_RDWR | os.O_CREAT, 0o640)
os.write(o, b"I")                             # outside the directory: not traced
os.close(o)
"""


def trace(tmp_path, script, *args):
    traced = tmp_path / "traced"
    traced.mkdir()
    log = tmp_path / "log"
    env = dict(os.environ, LD_PRELOAD=lib_path(), POWERCUT_DIR=str(traced),
               POWERCUT_LOG=str(log))
    subprocess.run(["/usr/bin/python3", "-c", script, str(traced), *args], env=env,
                   check=True, timeout=60)
    return traced, crashstate.Log(log)


def test_library_records_every_write_and_flush(tmp_path):
    _, log = trace(tmp_path, TRACEE)
    assert sorted(log.files.values()) == ["a", "b"]
    ids = {v: k for k, v in log.files.items()}
    a, b = ids["a"], ids["b"]
    got = [(crashstate.TYPE_NAMES[r.type], r.file, r.off, r.len,
            bytes(r.data[:1]) if r.data is not None else None) for r in log.records]
    assert got == [
        ("write", a, 0, 100, b"A"),
        ("write", a, 4096, 1000, b"B"),
        ("write", a, 200, 30, b"C"),
        ("flush", a, 0, crashstate.WHOLE, None),
        ("write", a, 8192, 600, b"E"),
        ("truncate", a, 9000, 0, None),
        ("write", a, 0, 5, b"F"),
        ("flush", a, 0, crashstate.WHOLE, None),
        ("syncwrite", b, 0, 50, b"G"),
    ], got
    assert bytes(log.records[2].data) == b"C" * 10 + b"D" * 20
    times = [r.t_ns for r in log.records]
    assert times == sorted(times)
    assert not log.truncated_tail


def test_library_refuses_writable_shared_mappings(tmp_path):
    script = ("import mmap, os, sys\n"
              "fd = os.open(os.path.join(sys.argv[1], 'data.mdb'), os.O_RDWR | os.O_CREAT)\n"
              "os.ftruncate(fd, 4096)\n"
              "m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n"
              "m[0:1] = b'x'\n")
    with pytest.raises(crashstate.LogError, match="writable shared mapping"):
        trace(tmp_path, script)


def fake_log(path, records, files=("f", "g"), cut_tail=0):
    """Write a log by hand: records are (type, file, off, len_or_bytes)."""
    out = bytearray(crashstate.MAGIC)
    for i, name in enumerate(files):
        out += crashstate.HEADER.pack(crashstate.OPEN, i, 0, len(name), 0) + name.encode()
    for t, (type_, file, off, x) in enumerate(records, 1):
        data = x if isinstance(x, bytes) else b""
        length = len(x) if isinstance(x, bytes) else x
        out += crashstate.HEADER.pack(type_, file, off, length, t) + data
    path.write_bytes(bytes(out[:len(out) - cut_tail]))
    return crashstate.Log(path)


def state_of(log, tmp_path, cut, mode, seed=0, **kw):
    out = tmp_path / f"s-{cut}-{mode}-{seed}"
    crashstate.build(log, None, str(out), cut, mode, random.Random(seed), **kw)
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out))}


def test_builder_keeps_flushed_writes_only_of_the_flushed_file(tmp_path):
    W, F, S = crashstate.WRITE, crashstate.FLUSH, crashstate.SYNCWRITE
    log = fake_log(tmp_path / "log", [
        (W, 0, 0, b"a" * 4),        # 0: f, flushed by 2
        (W, 1, 0, b"b" * 4),        # 1: g, never flushed (2 flushes f only)
        (F, 0, 0, crashstate.WHOLE),
        (S, 1, 4, b"s" * 2),        # 3: g, O_DSYNC: durable, makes 1 no more durable
        (W, 0, 4, b"c" * 4),        # 4: f, unflushed
    ])
    assert log.durable(5) == {0, 3}
    assert state_of(log, tmp_path, 5, "flushed") == {"f": b"aaaa", "g": b"\0" * 4 + b"ss"}
    assert state_of(log, tmp_path, 5, "all") == {"f": b"aaaacccc", "g": b"bbbbss"}
    # Before the flush (cut 2), nothing of f is durable.
    assert state_of(log, tmp_path, 2, "flushed") == {"f": b"", "g": b""}
    # Every subset of the unflushed writes 1 and 4 appears over seeds, with 0 and 3 in all.
    seen = {tuple(sorted(state_of(log, tmp_path, 5, "subset", s).items())) for s in range(40)}
    assert len(seen) == 4


def test_builder_tears_writes_at_sector_boundaries(tmp_path):
    W = crashstate.WRITE
    data = bytes(range(256)) * 8  # 2048 bytes from offset 100: boundaries 512, 1024, 1536, 2048
    log = fake_log(tmp_path / "log", [(W, 0, 100, data)], files=("f",))
    prefixes = set()
    for s in range(60):
        st = state_of(log, tmp_path, 1, "torn", s, p=1.0, p_tear=1.0)["f"]
        assert st[:100] == b"\0" * 100
        n = len(st) - 100
        assert st[100:] == data[:n]
        prefixes.add(n)
    assert prefixes == {512 - 100, 1024 - 100, 1536 - 100, 2048 - 100}
    # The write in progress at a cut is kept whole, torn or lost.
    kinds = set()
    for s in range(60):
        st = state_of(log, tmp_path, 0, "torn", s).get("f", b"")
        kinds.add("lost" if not st else "whole" if len(st) == 2148 else "torn")
    assert kinds == {"lost", "whole", "torn"}


def test_builder_drops_a_record_cut_short(tmp_path):
    W = crashstate.WRITE
    log = fake_log(tmp_path / "log", [(W, 0, 0, b"x" * 10), (W, 0, 10, b"y" * 10)],
                   files=("f",), cut_tail=3)
    assert len(log) == 1 and log.truncated_tail
