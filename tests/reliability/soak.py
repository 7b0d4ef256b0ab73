"""soak: the long reliability run (docs/RELIABILITY.md). scripts/soak runs it.

Starts a coordd on ipc:// endpoints in a work directory, 11 council workers (the Python
client, one per council, at --rate records per second each, logging to ClientLogs), a
subscriber that never reads, a subscriber that connects and vanishes every few ms, and an
exact item subscriber (gaps repaired from history). Then, until --seconds have passed, it
breaks something at random moments while records are being accepted (each kind once
first, in random order, then at random):

  kill     kill -9 of the broker, restarted on the same state directory
  hup      SIGHUP (a config reload; a broker without reload logs and ignores it)
  stop     SIGSTOP for twice the clients' ack timeout, then SIGCONT
  client   kill -9 of one worker, restarted with --resume (resends from its log)
  import   a coord-push import of a JSON Lines file; half of them killed mid-way and
           run again (libcoord's outbox resends)

At the end: the workers stop and wait for their answers, the imports finish, the exact
subscriber catches up, the checker runs over every log, the broker gets SIGTERM and must
exit 0 with no sanitizer report. Prints the figures and exits 0 when every check passed,
1 when one failed, 2 on bad usage.
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import relharness  # noqa: E402
import cluster  # noqa: E402
from subs import ExactItems, churn  # noqa: E402

import coordlib  # noqa: E402

EVENTS = [("kill", 3), ("hup", 2), ("stop", 1), ("client", 2), ("import", 1)]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="soak", description="Run coordd under mixed load with broker crashes, "
        "SIGHUP reloads, SIGSTOP pauses, client crashes and imports for a given time, then "
        "check the store against what the clients logged and print the figures.")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (60)")
    p.add_argument("--rate", type=float, default=150.0,
                   help="new records per second per council (150; 11 councils)")
    p.add_argument("--build", default=None,
                   help="build directory for coordd and coord-push (default: build/, or "
                   "$COORDD_BIN and $COORD_PUSH_BIN)")
    p.add_argument("--dir", default=None,
                   help="work directory (default: a new temporary directory, removed on "
                   "success)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the time)")
    p.add_argument("--ack-timeout", type=float, default=1.0,
                   help="the clients' ack timeout, seconds (1)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.ack_timeout <= 0:
        p.error("--seconds, --rate and --ack-timeout must be positive")
    return args


def log(msg):
    print(f"soak: {msg}", flush=True)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if args.build:
            b = Path(args.build).resolve()
            os.environ["COORDD_BIN"] = str(b / "daemon" / "coordd")
            os.environ["COORD_PUSH_BIN"] = str(b / "clients" / "coord-push")
        self.metrics_port = coordlib.free_tcp_port()
        d = cluster.it_conftest.Daemon(
            cluster.it_conftest.coordd_binary(), self.workdir / "broker",
            overrides={"publish": {"hwm": "100"}, "digest": {"publish_interval_ms": "200"},
                       "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"}})
        self.c = cluster.Cluster(d, self.workdir / "clients", ack_timeout=args.ack_timeout)
        self.events = {name: 0 for name, _w in EVENTS}
        self.imports = []  # Import objects not yet finished cleanly
        self.import_seq = 0

    @property
    def d(self):
        return self.c.daemon

    def wait_accepted(self, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        with self.d.query(timeout=10) as q:
            while q.stats().accepted < n:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the broker did not accept {n} records in "
                                         f"{timeout} s")
                time.sleep(0.02)

    def event(self, name):
        c, d = self.c, self.d
        if name == "kill":
            c.crash()
            c.restart()
        elif name == "hup":
            os.kill(d.pid, signal.SIGHUP)
        elif name == "stop":
            os.kill(d.pid, signal.SIGSTOP)
            try:
                time.sleep(2 * c.ack_timeout)
            finally:
                os.kill(d.pid, signal.SIGCONT)
        elif name == "client":
            council = self.rng.choice(coordlib.COUNCIL_IDS)
            w = c.workers[f"w-{council}"][-1]
            w.kill9()
            c.worker(f"w-{council}", councils=council, rate=self.args.rate, max_in_flight=32,
                     resume=True)
        elif name == "import":
            self.import_seq += 1
            council = self.rng.choice(coordlib.COUNCIL_IDS)
            imp = c.import_file(f"imp{self.import_seq}", council,
                                self.rng.randint(200, 1000), seed=self.import_seq)
            imp.start(timeout_s=300, max_in_flight=16)
            self.imports.append(imp)
            if self.rng.random() < 0.5:
                self.wait_accepted(self.rng.randint(1, 200))
                imp.kill9()
                imp.start(timeout_s=300, max_in_flight=16)
        self.events[name] += 1

    def run(self):
        args = self.args
        t0 = time.monotonic()
        self.d.start()
        log(f"broker pid {self.d.pid}, work directory {self.workdir}, seed {args.seed}")
        base_rss = self.d.rss_kb()["VmRSS"]
        stuck = self.d.subscriber("", rcvhwm=100)
        exact = ExactItems(self.d, rcvhwm=100)
        stop = threading.Event()
        counts = {"vanished": 0}
        churner = threading.Thread(target=churn,
                                   args=(self.d, stop, counts, "vanished", 0.005, True, 100))
        exact_stop = threading.Event()
        exact_errors = []

        def read_exact():
            try:
                while not exact_stop.is_set():
                    if self.d.running:
                        exact.read_for(0.2)
                    else:
                        time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - reported at the end
                exact_errors.append(repr(e))

        reader = threading.Thread(target=read_exact)
        sampler = cluster.Sampler(self.d, metrics_port=self.metrics_port, interval=0.5,
                                  timeout=5.0, cluster=self.c)
        ok = True
        try:
            with sampler:
                churner.start()
                reader.start()
                self.c.council_workers(rate=args.rate, max_in_flight=32)
                self.c.wait_flowing()
                end = t0 + args.seconds
                names = [n for n, _w in EVENTS]
                weights = [w for _n, w in EVENTS]
                # Each kind once first (in random order), then at random by weight.
                first = self.rng.sample(names, len(names))
                while time.monotonic() < end:
                    self.wait_accepted(self.rng.randint(1, 500))
                    self.event(first.pop() if first else self.rng.choices(names, weights)[0])
                    # A quiet spell between events (still bounded by --seconds).
                    pause = min(self.rng.uniform(0.0, 1.5), max(0.0, end - time.monotonic()))
                    time.sleep(pause)
                load_s = time.monotonic() - t0
                log("stopping the clients")
                summaries = self.c.stop_workers(timeout=300)
                for imp in self.imports:
                    status, result = imp.finish(300)
                    if status != 0:
                        imp.start(timeout_s=300)
                        status, result = imp.finish(300)
                    assert status == 0, f"import {imp.name}: {status} {result}"
                exact_stop.set()
                reader.join(60)
                exact.catch_up()
            stop.set()
            churner.join(30)
            rep = self.c.check()
            with self.d.query(timeout=60) as q:
                stored, _ = q.history_all()
            exact_ok = exact.items == {it.seq: it.SerializeToString() for it in stored}
        finally:
            stop.set()
            exact_stop.set()
            stuck.close()
            exact.close()
        status = self.d.stop()
        problems = []
        if status != 0:
            problems.append(f"coordd exited {status} on SIGTERM")
        for i, (argv, path, _st) in enumerate(self.d.runs):
            text = path.read_text(errors="replace") if path.exists() else ""
            found = cluster.it_conftest.sanitizer_findings(text)
            if found:
                problems.append(f"broker run {i}: {found} in {path}")
        if exact_errors:
            problems.append(f"exact subscriber: {exact_errors[0]}")
        if not exact_ok:
            problems.append("the exact subscriber's items differ from the store")
        if not rep.ok() or rep["rejected"]:
            problems.append("checker: " + rep.details())
        if sampler.failures:
            problems.append(f"unanswered samples: {sampler.failures[:3]}")
        acked = rep["acked"]
        figures = {
            "seconds": round(load_s, 1), "seed": args.seed,
            "records_acked": acked, "items": rep["items"],
            "acked_per_second": round(acked / load_s, 1),
            "events": self.events, "broker_runs": len(self.d.runs),
            "worker_runs": sum(len(r) for r in self.c.workers.values()),
            "imports": len(self.imports),
            "retry_later": sum(s["retry_later"] for s in summaries),
            "resent_from_logs": sum(s["resent"] for r in self.c.workers.values()
                                    for w in r if (s := w.summary())),
            "client_reconnects": sum(s["reconnects"] for s in summaries),
            "exact_subscriber": {"gaps": exact.gaps, "catch_ups": exact.catch_ups,
                                 "equal_to_store": exact_ok},
            "subscribers_vanished": counts["vanished"],
            "rss_mib": {"start": base_rss // 1024, "max": sampler.rss_max // 1024},
            "stats_max_s": round(sampler.stats_max, 3),
            "healthz_max_s": round(sampler.health_max, 3),
        }
        ok = not problems
        log(rep.line())
        log(f"{figures['seconds']} s, {acked} records acked ({figures['acked_per_second']}/s), "
            f"events {json.dumps(self.events)}, broker runs {figures['broker_runs']}, "
            f"worker runs {figures['worker_runs']}, {len(self.imports)} imports, "
            f"{figures['resent_from_logs']} resent from logs, exact subscriber "
            f"{exact.gaps} gaps / {exact.catch_ups} catch-ups, VmRSS "
            f"{figures['rss_mib']['start']} -> max {figures['rss_mib']['max']} MiB, stats "
            f"<= {figures['stats_max_s']} s, /healthz <= {figures['healthz_max_s']} s")
        if args.json:
            print(json.dumps({"ok": ok, "checker": {k: v for k, v in rep.items()
                                                    if k != "examples"}, **figures}))
        for p in problems:
            log("FAILED: " + p)
        log("PASSED" if ok else "FAILED")
        return ok

    def cleanup(self, ok):
        self.c.cleanup()
        if ok and not self.args.dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif not ok:
            log(f"kept {self.workdir}")


def main(argv):
    args = parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    cluster.it_conftest.coordd_binary = _binary_or_exit(cluster.it_conftest.coordd_binary)
    s = Soak(args)
    ok = False
    try:
        ok = s.run()
    except AssertionError as e:
        log(f"FAILED: {e}")
    finally:
        s.cleanup(ok)
    return 0 if ok else 1


def _binary_or_exit(find):
    """coordd_binary() calls pytest.fail() when the binary is missing: say it plainly."""
    def wrapped():
        path = os.environ.get("COORDD_BIN") or str(relharness.REPO / "build" / "daemon" /
                                                   "coordd")
        if not os.access(path, os.X_OK):
            sys.exit(f"soak: coordd binary {path!r} not found (build it, or use --build)")
        return find()
    return wrapped


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
