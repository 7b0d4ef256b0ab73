"""Fixtures for coordd's integration tests: they run the real daemon binary.

Environment:
  COORDD_BIN     the daemon to run (meson passes it); default build/daemon/coordd
  COORDD_WRAPPER a command line to run the daemon under, e.g. "valgrind --error-exitcode=99
                 --leak-check=full --errors-for-leak-kinds=definite" (see README.md)
  COORD_PB2_DIR  directory holding the generated coord_pb2.py; when unset, coord.proto is
                 compiled with protoc into a temporary directory

`pytest --coordd-endpoint=ENDPOINT` runs the suite against an already-running daemon
(councils c01..c11 must be registered there) and skips the tests marked `local_only`.

The `coordd` fixture starts a daemon in tmp_path: a config file, an ipc:// endpoint and the
state directory live there; NOTIFY_SOCKET points at a datagram socket owned by the fixture,
and start() returns once READY=1 arrives (or fails if the daemon exits first). At
teardown every daemon still running gets SIGTERM and must exit 0, and no stderr may hold a
sanitizer report.
"""

import os
import shlex
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def _setup_pb2_path():
    pb2_dir = os.environ.get("COORD_PB2_DIR")
    if not pb2_dir:
        pb2_dir = tempfile.mkdtemp(prefix="coord-pb2-")
        subprocess.run(["protoc", f"--proto_path={REPO / 'proto'}", f"--python_out={pb2_dir}",
                        str(REPO / "proto" / "coord.proto")], check=True)
    if pb2_dir not in sys.path:
        sys.path.insert(0, pb2_dir)


_setup_pb2_path()

import coordlib  # noqa: E402  (needs coord_pb2 on sys.path)


def pytest_addoption(parser):
    parser.addoption("--coordd-endpoint", default=None,
                     help="run against an already-running coordd at this ingest endpoint; "
                          "tests marked local_only are skipped")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "local_only: needs a local coordd binary and its state directory")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--coordd-endpoint"):
        return
    skip = pytest.mark.skip(reason="local_only: skipped with --coordd-endpoint")
    for item in items:
        if "local_only" in item.keywords:
            item.add_marker(skip)


free_tcp_port = coordlib.free_tcp_port
default_config = coordlib.default_config
render_config = coordlib.render_config


def coordd_binary():
    path = os.environ.get("COORDD_BIN") or str(REPO / "build" / "daemon" / "coordd")
    if not os.access(path, os.X_OK):
        pytest.fail(f"coordd binary {path!r} not found or not executable (set COORDD_BIN)")
    return path


def sanitizer_findings(text):
    return [m for m in SANITIZER_MARKERS if m in text]


class DaemonError(AssertionError):
    pass


class Daemon:
    """One coordd configuration in a work directory, started any number of times on the
    same state directory."""

    is_local = True

    def __init__(self, binary, workdir, overrides=None, config_text=None, state_dir=None,
                 endpoint=None):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = Path(state_dir) if state_dir else self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._short_dir = None
        self.endpoint = endpoint or "ipc://" + self._socket_path("ingest.sock")
        self.publish_endpoint = "ipc://" + self._socket_path("publish.sock")
        self.query_endpoint = "ipc://" + self._socket_path("query.sock")
        self.config_path = self.workdir / "coordd.conf"
        self.config = default_config(self.state_dir, self.endpoint, self.publish_endpoint,
                                     self.query_endpoint)
        for section, keys in (overrides or {}).items():
            self.config.setdefault(section, {}).update({k: str(v) for k, v in keys.items()})
        self.config_path.write_text(config_text if config_text is not None
                                    else render_config(self.config))
        # Section values an override set win over the defaults above.
        self.publish_endpoint = self.config.get("publish", {}).get("endpoint",
                                                                   self.publish_endpoint)
        self.query_endpoint = self.config.get("query", {}).get("endpoint", self.query_endpoint)
        self.proc = None
        self.notify = None
        self.notifications = []
        self.runs = []  # (argv, stderr path, exit status or None)
        self.stderr_path = None

    def _socket_path(self, name):
        # sun_path holds 108 bytes; long test names make tmp_path too long for a socket.
        path = self.workdir / name
        if len(str(path)) < 100:
            return str(path)
        if self._short_dir is None:
            self._short_dir = tempfile.mkdtemp(prefix="coordd-", dir="/tmp")
        return os.path.join(self._short_dir, name)

    # life cycle ------------------------------------------------------------------------
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait_ready=True, args=None, timeout=READY_TIMEOUT, env=None):
        """Start the daemon (`--config <file>` unless `args` given). With wait_ready,
        return once READY=1 arrives; fail if it exits first or the timeout passes.
        `env` adds to (and overrides) the environment."""
        assert not self.running, "already running"
        n = len(self.runs)
        self.stderr_path = self.workdir / f"coordd.{n}.stderr"
        stdout_path = self.workdir / f"coordd.{n}.stdout"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"coordd-it-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.notify.bind("\0" + name)
        self.notifications = []
        extra_env = env or {}
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = "@" + name
        env.pop("JOURNAL_STREAM", None)
        env.setdefault("ASAN_OPTIONS", "halt_on_error=1:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        env.update(extra_env)
        argv = shlex.split(os.environ.get("COORDD_WRAPPER", "")) + [self.binary] + (
            args if args is not None else ["--config", str(self.config_path)])
        with open(self.stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=env, cwd=self.workdir)
        self.runs.append([argv, self.stderr_path, None])
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _read_notify(self, timeout):
        r, _, _ = select.select([self.notify], [], [], timeout)
        if not r:
            return False
        data = self.notify.recv(65536)
        self.notifications.append(data.decode(errors="replace"))
        return True

    def ready_seen(self):
        return any("READY=1" in msg.split("\n") for msg in self.notifications)

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self.ready_seen():
            status = self.proc.poll()
            if status is not None:
                self._finished(status)
                raise DaemonError(f"coordd exited with status {status} before READY=1; "
                                  f"stderr:\n{self.stderr()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonError(f"no READY=1 from coordd within {timeout} s; "
                                  f"notifications {self.notifications}; "
                                  f"stderr:\n{self.stderr()}")
            # Short select slices so an early exit is noticed promptly.
            self._read_notify(min(0.1, remaining))

    def wait_notification(self, pred, timeout=READY_TIMEOUT, start=0):
        """Wait until a notification at index >= start satisfies pred(text); returns its
        index. Fails if the daemon exits first or the timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.notifications)):
                if pred(self.notifications[i]):
                    return i
            if self.proc.poll() is not None:
                raise DaemonError(f"coordd exited; notifications {self.notifications}; "
                                  f"stderr:\n{self.stderr()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonError(f"no matching notification within {timeout} s; "
                                  f"notifications {self.notifications}")
            self._read_notify(min(0.1, remaining))

    def reload(self, timeout=READY_TIMEOUT):
        """SIGHUP, then wait for RELOADING=1 and the READY=1 after it (the reload is
        done, whatever its result)."""
        start = len(self.notifications)
        self.proc.send_signal(signal.SIGHUP)
        i = self.wait_notification(lambda m: "RELOADING=1" in m.split("\n"), timeout, start)
        return self.wait_notification(lambda m: "READY=1" in m.split("\n"), timeout, i + 1)

    def _finished(self, status):
        self.runs[-1][2] = status
        if self.notify is not None:
            while self._read_notify(0):
                pass
            self.notify.close()
            self.notify = None

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the process to exit by itself; returns its exit status (negative:
        killed by that signal)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._finished(None)
            raise DaemonError(f"coordd did not exit within {timeout} s; "
                              f"stderr:\n{self.stderr()}")
        self._finished(status)
        return status

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig` and wait for the exit; returns the exit status."""
        assert self.proc is not None, "never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def restart(self, **kw):
        """Stop (SIGTERM, must exit 0) if running, then start again on the same state."""
        if self.running:
            status = self.stop()
            assert status == 0, f"coordd exited {status} on SIGTERM; stderr:\n{self.stderr()}"
        return self.start(**kw)

    # inspection ------------------------------------------------------------------------
    def stderr(self, run=-1):
        path = self.runs[run][1] if self.runs else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def store(self, lock=None):
        """The store, read-only; lock defaults to True while running, False after."""
        if lock is None:
            lock = self.running
        return coordlib.Store(self.state_dir, lock=lock)

    def council(self, council="c01", **kw):
        return coordlib.Council(self.endpoint, council=council, **kw)

    def query(self, **kw):
        """A query client (DEALER) on the query socket."""
        return coordlib.Query(self.query_endpoint, **kw)

    def subscriber(self, *topics, **kw):
        """A SUB socket on the publish socket, subscribed to `topics`."""
        return coordlib.Subscriber(self.publish_endpoint, topics, **kw)

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def rss_kb(self):
        """VmRSS and RssAnon of the running daemon, in KiB, from /proc/PID/status."""
        return coordlib.proc_rss_kb(self.proc.pid)

    def cleanup(self):
        """Teardown: stop what runs (must exit 0); report sanitizer output. Returns a
        list of problems."""
        problems = []
        if self.running:
            try:
                status = self.stop()
            except DaemonError as e:
                problems.append(str(e))
            else:
                if status != 0:
                    problems.append(f"coordd exited with status {status} on SIGTERM at "
                                    f"teardown; stderr:\n{self.stderr()}")
        elif self.notify is not None:
            self.notify.close()
            self.notify = None
        for i, (argv, path, _status) in enumerate(self.runs):
            text = path.read_text(errors="replace") if path.exists() else ""
            found = sanitizer_findings(text)
            if found:
                problems.append(f"run {i} ({' '.join(argv)}): stderr has {found}:\n{text}")
        if self._short_dir:
            for name in os.listdir(self._short_dir):
                try:
                    os.unlink(os.path.join(self._short_dir, name))
                except OSError:
                    pass
            try:
                os.rmdir(self._short_dir)
            except OSError:
                pass
        return problems


class RemoteDaemon:
    """A daemon started by someone else (--coordd-endpoint): only its endpoint is known."""

    is_local = False
    state_dir = None

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def council(self, council="c01", **kw):
        return coordlib.Council(self.endpoint, council=council, **kw)

    def store(self, lock=None):
        raise RuntimeError("no store access with --coordd-endpoint")


@pytest.fixture
def coordd_bin():
    """Path of the daemon binary (COORDD_BIN)."""
    return coordd_binary()


@pytest.fixture
def coordd_factory(tmp_path):
    """make(name="d", overrides=None, config_text=None, start=True, **kw) -> Daemon.

    `overrides` is {section: {key: value}} merged into the default config. Each Daemon
    gets its own directory under tmp_path unless state_dir/endpoint are given."""
    binary = coordd_binary()
    daemons = []

    def make(name="d", overrides=None, config_text=None, start=True, **kw):
        d = Daemon(binary, tmp_path / name, overrides=overrides, config_text=config_text, **kw)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in daemons:
        problems.extend(d.cleanup())
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def coordd(request, coordd_factory_or_none):
    """A running daemon with the default config (or the --coordd-endpoint one)."""
    endpoint = request.config.getoption("--coordd-endpoint")
    if endpoint:
        return RemoteDaemon(endpoint)
    return coordd_factory_or_none()


@pytest.fixture
def coordd_factory_or_none(request):
    if request.config.getoption("--coordd-endpoint"):
        return None
    return request.getfixturevalue("coordd_factory")


@pytest.fixture(scope="module")
def shared_coordd(request, tmp_path_factory):
    """One daemon for a whole module (for many small cases); same teardown checks."""
    endpoint = request.config.getoption("--coordd-endpoint")
    if endpoint:
        yield RemoteDaemon(endpoint)
        return
    d = Daemon(coordd_binary(), tmp_path_factory.mktemp("shared"))
    d.start()
    yield d
    problems = d.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def council(coordd):
    """A council client (c01) connected to the `coordd` fixture's daemon."""
    with coordd.council("c01") as c:
        yield c
