"""cluster: one coordd and the client processes around it, for the reliability tests and
the soak command (docs/RELIABILITY.md).

- Cluster.worker(): a relworker.py process (the Python client, logging to its ClientLog).
- Cluster.import_file() / Import: a coord-push import of a JSON Lines file (libcoord, with
  its outbox on disk); the harness logs the file's records as sent before the first run
  and as acknowledged once a run exits 0 (every row ACCEPTED or DUPLICATE).
- Cluster.crash() / restart(): kill -9 and start again on the same state directory.
- Cluster.check(): the checker over every client log.
- Sampler: the broker's VmRSS, /healthz and query-socket answer times, sampled in a thread.

The daemon itself is the integration tests' Daemon class (tests/integration/conftest.py),
loaded here under another module name.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import relharness  # noqa: E402
from relharness import ClientLog, RecordGen, build_path  # noqa: E402

import checker  # noqa: E402
import coordlib  # noqa: E402
from google.protobuf import json_format  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "coordd_it_conftest", HERE.parent / "integration" / "conftest.py")
it_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it_conftest)

PYTHON = "/usr/bin/python3"
SANITIZER_MARKERS = it_conftest.SANITIZER_MARKERS


def child_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "halt_on_error=1:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for k in ("COORD_ENDPOINT", "COORD_COUNCIL", "COORD_OUTBOX"):
        env.pop(k, None)
    return env


class WorkerProc:
    """A relworker.py process; stdout and stderr go to files beside its log."""

    def __init__(self, cluster, name, argv):
        self.name = name
        self.argv = argv
        self.out_path = cluster.dir / f"{name}.{len(cluster.runs_of(name))}.out"
        self.err_path = self.out_path.with_suffix(".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      env=child_env())
        self.status = None
        self.terminated = False

    def lines(self, prefix):
        text = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return [json.loads(ln[len(prefix):]) for ln in text.splitlines()
                if ln.startswith(prefix)]

    def flowing(self):
        """True once its first record was answered."""
        return self._has_line("FLOWING")

    def done(self):
        """The DONE figures once everything it sent is answered, else None."""
        got = self.lines("DONE ")
        return got[-1] if got else None

    def summary(self):
        got = self.lines("SUMMARY ")
        return got[-1] if got else None

    def running(self):
        return self.p.poll() is None

    def _has_line(self, line):
        text = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return line + "\n" in text

    def terminate(self, timeout=30.0):
        """SIGTERM once: stop generating, wait for the answers, exit. Waits first until
        the worker handles SIGTERM (its "STARTED" line)."""
        deadline = time.monotonic() + timeout
        while self.p.poll() is None and not self._has_line("STARTED"):
            assert time.monotonic() < deadline, f"worker {self.name} never started"
            time.sleep(0.01)
        if self.p.poll() is None and not self.terminated:
            self.p.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout=180.0):
        """terminate() and wait; returns the exit status."""
        self.terminate()
        try:
            self.status = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.status = self.p.wait(10)
            raise AssertionError(f"worker {self.name} did not stop within {timeout} s; "
                                 f"stderr:\n{self.stderr()}")
        return self.status

    def kill9(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.status = self.p.wait(10)
        return self.status

    def stderr(self):
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


class Import:
    """A coord-push import of `n` generated records of one council: the JSON Lines file,
    its outbox, and the harness's log of it (S lines written before the first run)."""

    def __init__(self, cluster, name, council, n, seed=4242):
        self.cluster = cluster
        self.name = name
        self.council = council
        self.path = cluster.dir / f"{name}.jsonl"
        self.outbox = cluster.dir / f"{name}.outbox"
        self.log_path = cluster.dir / f"{name}.log"
        self.n = n
        self.proc = None
        self.runs = 0
        self.keys = []
        gen = RecordGen(council, f"{name}-{coordlib.RUN_ID}", seed)
        log = ClientLog(self.log_path)
        log.generation(0)
        lines = []
        for _ in range(n):
            env = gen.next_record()[0]  # first revisions only: rows are sent pipelined
            lines.append(json_format.MessageToJson(env, indent=None))
            log.sent(env.council, env.msg_id, env.revision, env.SerializeToString())
            self.keys.append((env.council, env.msg_id, env.revision))
        log.close()
        self.path.write_text("\n".join(lines) + "\n")

    def argv(self, *more):
        push = build_path("COORD_PUSH_BIN", "clients/coord-push")
        return [push, "--endpoint", self.cluster.daemon.endpoint, "--council", self.council,
                "--outbox", str(self.outbox), "--ack-timeout", str(self.cluster.ack_timeout_ms),
                "--backoff-max", "500", *more]

    def start(self, timeout_s=120, max_in_flight=64):
        """Start `coord-push import` (it runs until every row is answered)."""
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        self.out_path = self.cluster.dir / f"{self.name}.{self.runs}.out"
        self.err_path = self.out_path.with_suffix(".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv("--timeout", str(timeout_s), "--max-in-flight", str(max_in_flight),
                          "--json", "import", str(self.path)),
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env())
        return self.proc

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def finish(self, timeout=180.0):
        """Wait for the run; on exit 0 log every row as acknowledged. Returns (status,
        the --json result or None)."""
        status = self.proc.wait(timeout)
        err = self.err_path.read_text(errors="replace")
        found = [m for m in SANITIZER_MARKERS if m in err]
        assert not found, f"{found} in coord-push's stderr:\n{err}"
        try:
            result = json.loads(self.out_path.read_text())
        except ValueError:
            result = None
        if status == 0:
            log = ClientLog(self.log_path)
            for council, msg_id, revision in self.keys:
                log.acked(council, msg_id, revision, "ACKED", 0)
            log.close()
        return status, result

    def outbox_listing(self):
        r = subprocess.run(self.argv("--json", "outbox"), capture_output=True, text=True,
                           timeout=60, env=child_env())
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def http_get(port, path, timeout):
    """(status code, body) of GET http://127.0.0.1:port/path."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


class Sampler:
    """A thread that samples, every `interval` s while the broker runs: its VmRSS (KiB),
    the answer time of a query StatsRequest and (with a metrics port) of GET /healthz.
    Keeps the maxima, the failures (no answer within `timeout`, unless the `cluster`
    crashed its broker meanwhile), and the peak open ingest connections from the stats."""

    def __init__(self, daemon, metrics_port=None, interval=0.25, timeout=5.0, cluster=None):
        self.daemon = daemon
        self.epoch = (lambda: cluster.epoch) if cluster is not None else (lambda: 0)
        self.metrics_port = metrics_port
        self.interval = interval
        self.timeout = timeout
        self.rss_max = 0
        self.rss_samples = []
        self.stats_max = 0.0
        self.health_max = 0.0
        self.failures = []
        self.samples = 0
        self.peak_connections = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(30)

    def _run(self):
        q = None
        while not self._stop.wait(self.interval):
            if not self.daemon.running:
                continue
            try:
                rss = coordlib.proc_rss_kb(self.daemon.pid)["VmRSS"]
                self.rss_max = max(self.rss_max, rss)
                self.rss_samples.append(rss)
            except (OSError, KeyError):
                continue
            # A broker killed (and maybe restarted) meanwhile explains a missing answer.
            # Popen.poll() from this thread may say "running" while the main thread waits
            # for the killed process, so the cluster's epoch tells instead.
            epoch = self.epoch()

            def same_broker():
                return self.epoch() == epoch and self.daemon.running

            if q is None:
                q = coordlib.Query(self.daemon.query_endpoint, timeout=self.timeout)
            t0 = time.monotonic()
            try:
                st = q.stats()
                self.stats_max = max(self.stats_max, time.monotonic() - t0)
                self.peak_connections = max(self.peak_connections, st.ingest_connections)
            except AssertionError as e:
                if same_broker():
                    self.failures.append(f"query stats: {e}")
                q.close()
                q = None
            if self.metrics_port:
                t0 = time.monotonic()
                try:
                    code, body = http_get(self.metrics_port, "/healthz", self.timeout)
                    if code != 200 and same_broker():
                        self.failures.append(f"/healthz answered {code} {body!r}")
                    elif code == 200:
                        self.health_max = max(self.health_max, time.monotonic() - t0)
                except OSError as e:
                    if same_broker():
                        self.failures.append(f"/healthz: {e}")
            self.samples += 1
        if q is not None:
            q.close()


class Cluster:
    """A daemon (it_conftest.Daemon) and its client processes in `workdir`. The clients'
    ack timeout is `ack_timeout` times relharness.slowdown()."""

    def __init__(self, daemon, workdir, ack_timeout=2.0):
        self.daemon = daemon
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ack_timeout = ack_timeout * relharness.slowdown()
        self.ack_timeout_ms = int(self.ack_timeout * 1000)
        self.workers = {}  # name -> [WorkerProc, ...] (one per run)
        self.imports = []
        self.crashes = 0
        self.epoch = 0  # changes when the broker is killed and when it is started

    def runs_of(self, name):
        return self.workers.get(name, [])

    def log_path(self, name):
        return self.dir / f"{name}.log"

    def worker(self, name, councils="c01", connections=1, records=0, rate=0.0,
               max_in_flight=64, resume=False, hold=False, seed=None, extra=()):
        argv = [PYTHON, str(HERE / "relworker.py"), "--endpoint", self.daemon.endpoint,
                "--log", str(self.log_path(name)), "--name", f"{name}-{coordlib.RUN_ID}",
                "--councils", councils, "--connections", str(connections),
                "--records", str(records), "--rate", str(rate), "--max-in-flight",
                str(max_in_flight), "--ack-timeout", str(self.ack_timeout),
                "--seed", str(seed if seed is not None else 1915 + len(self.workers) * 31)]
        if resume:
            argv.append("--resume")
        if hold:
            argv.append("--hold")
        argv.extend(extra)
        w = WorkerProc(self, name, argv)
        self.workers.setdefault(name, []).append(w)
        return w

    def council_workers(self, councils=None, prefix="w", **kw):
        """One worker per council (default c01..c11)."""
        return [self.worker(f"{prefix}-{c}", councils=c, **kw)
                for c in (councils or coordlib.COUNCIL_IDS)]

    def wait_flowing(self, timeout=60.0):
        """Wait until every running worker had a first record answered."""
        deadline = time.monotonic() + timeout
        for w in self.live_workers():
            while not w.flowing():
                assert w.running(), f"worker {w.name} exited {w.p.poll()}:\n{w.stderr()}"
                assert time.monotonic() < deadline, (
                    f"worker {w.name} had no answer within {timeout} s:\n{w.stderr()}")
                time.sleep(0.02)

    def live_workers(self):
        return [runs[-1] for runs in self.workers.values() if runs[-1].running()]

    def finish_workers(self, timeout=180.0):
        """Wait for every running worker to finish by itself (--records without --hold);
        each must exit 0. Returns their SUMMARY figures."""
        deadline = time.monotonic() + timeout
        out = []
        for w in [runs[-1] for runs in self.workers.values() if runs[-1].status is None]:
            try:
                w.status = w.p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"worker {w.name} still runs after {timeout} s: "
                                     f"{w.summary()}") from None
            assert w.status == 0, (f"worker {w.name} exited {w.status}: {w.summary()}; "
                                   f"stderr:\n{w.stderr()}")
            out.append(w.summary())
        return out

    def stop_workers(self, timeout=180.0):
        """SIGTERM every running worker, wait; every one must exit 0. Returns their
        SUMMARY figures."""
        live = self.live_workers()
        for w in live:
            w.terminate()
        out = []
        for w in live:
            status = w.stop(timeout)
            assert status == 0, (f"worker {w.name} exited {status}: {w.summary()}; "
                                 f"stderr:\n{w.stderr()}")
            out.append(w.summary())
        return out

    def import_file(self, name, council, n, seed=4242):
        imp = Import(self, name, council, n, seed)
        self.imports.append(imp)
        return imp

    def crash(self):
        """kill -9 the broker."""
        self.epoch += 1
        status = self.daemon.kill9()
        assert status == -signal.SIGKILL, f"coordd exited {status} instead of being killed"
        self.crashes += 1

    def restart(self):
        self.daemon.start()
        self.epoch += 1

    def logs(self):
        paths = [self.log_path(n) for n in self.workers]
        paths += [imp.log_path for imp in self.imports]
        return [p for p in paths if p.exists()]

    def check(self):
        """The checker over every log; the caller must have stopped every client."""
        with self.daemon.query(timeout=60) as q:
            return checker.check(q, self.logs())

    def cleanup(self):
        for runs in self.workers.values():
            for w in runs:
                if w.running():
                    w.kill9()
        for imp in self.imports:
            if imp.proc is not None and imp.proc.poll() is None:
                imp.kill9()
        problems = []
        for runs in self.workers.values():
            for w in runs:
                found = [m for m in SANITIZER_MARKERS if m in w.stderr()]
                if "Traceback" in w.stderr():
                    found.append("Traceback")
                if found:
                    problems.append(f"worker {w.name}: {found}:\n{w.stderr()}")
        problems.extend(self.daemon.cleanup())
        return problems


def assert_clean(rep):
    """Fail with the checker's line and examples unless every figure is 0."""
    assert rep.ok(), rep.line() + "\n" + rep.details()
    assert rep["rejected"] == 0, rep.line()


__all__ = ["Cluster", "Import", "Sampler", "WorkerProc", "assert_clean", "http_get",
           "it_conftest", "relharness"]
