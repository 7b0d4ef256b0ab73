"""Every client with CURVE keys against the real daemon with CURVE on: `coordctl keygen`
makes the broker's, a council's, a subscriber's and an admin's keypairs; the keys file is
made of the sections keygen printed; the config's [security] names the broker's secret key
and the keys file, so every socket is CURVE.

Then: coord-push with its council key is accepted; with an unknown key, with no keys, or with
the wrong broker key it gets no answer and exits 3 within its --timeout, saying why when the
broker said so; coord-watch with a subscriber key receives digests; coordctl digest works with
a subscriber key, stats needs an admin key; the Python client pushes, asks and subscribes
with keys. Key files that others may read are refused by every tool.

Environment (meson sets them): COORDCTL_BIN, COORD_WATCH_BIN, COORD_PUSH_BIN,
COORD_PYCLIENT_DIR. Nothing sleeps; every wait is bounded.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import coord_pb2 as pb

pytestmark = pytest.mark.local_only

REPO = Path(__file__).resolve().parent.parent.parent
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
EXIT_BROKER, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3  # coordctl, coord-watch
PUSH_REJECTED, PUSH_USAGE, PUSH_WAITING = 1, 2, 3  # coord-push


def tool(name, env_var):
    path = os.environ.get(env_var) or str(REPO / "build" / "clients" / name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} not built ({env_var} unset)")
    return path


def child_env(**extra):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "halt_on_error=1:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    for k in ("COORD_ENDPOINT", "COORD_COUNCIL", "COORD_OUTBOX", "COORD_SERVER_KEY",
              "COORD_KEY"):
        env.pop(k, None)
    env.update(extra)
    return env


def run(argv, timeout=60, **env):
    r = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, env=child_env(**env))
    found = [m for m in SANITIZER_MARKERS if m in r.stderr]
    assert not found, f"{found} in stderr of {argv}:\n{r.stderr}"
    return r


def keygen(keys_dir, name, role=None):
    """`coordctl keygen`; returns (public key, the keys-file section it printed)."""
    argv = [tool("coordctl", "COORDCTL_BIN"), "keygen", keys_dir / name]
    if role:
        argv += ["--role", role]
    r = run(argv)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    public = [line.split(": ", 1)[1] for line in out if line.startswith("public key: ")][0]
    section = "\n".join(out[out.index(f"[{role or 'council'}.{name}]"):]) + "\n"
    assert section.endswith(f"public_key = {public}\n")
    return public, section


class Keys:
    """The keypairs of one test: the broker, council c01, subscriber desk1, admin ops, and
    an intruder (a council key the broker does not list)."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "keys"
        self.dir.mkdir()
        self.server, _ = keygen(self.dir, "server")
        self.c01, c01 = keygen(self.dir, "c01")
        self.desk1, desk1 = keygen(self.dir, "desk1", "subscriber")
        self.ops, ops = keygen(self.dir, "ops", "admin")
        self.intruder, _ = keygen(self.dir, "intruder")
        self.keys_file = tmp_path / "keys.ini"
        self.keys_file.write_text("# pasted from coordctl keygen\n" + c01 + desk1 + ops)

    def public(self, name):
        return self.dir / f"{name}.public"

    def secret(self, name):
        return self.dir / f"{name}.secret"

    def opts(self, name, server="server"):
        """--server-key/--key for client `name` (the server key as a .public file)."""
        return ["--server-key", self.public(server), "--key", self.secret(name)]


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


@pytest.fixture
def curve_daemon(coordd_factory, keys):
    """A daemon whose sockets are all CURVE ([security] set; ipc:// endpoints)."""
    return coordd_factory(overrides={
        "security": {"secret_key_file": keys.secret("server"), "keys_file": keys.keys_file},
        "digest": {"publish_interval_ms": 200},
    })


def push(d, keys_opts, outbox, council="c01", timeout=20, title="Rally", extra_env=None):
    argv = [tool("coord-push", "COORD_PUSH_BIN"), "--endpoint", d.endpoint, "--council",
            council, "--outbox", outbox, "--timeout", timeout, *keys_opts,
            "event", "--kind", "rally", "--country", "FR", "--city", "Paris",
            "--date", "2020-10-04", "--title", title]
    return run(argv, timeout=timeout + 60, **(extra_env or {}))


def coordctl(d, keys_opts, *args, timeout=5):
    argv = [tool("coordctl", "COORDCTL_BIN"), "--endpoint", d.query_endpoint, "--timeout",
            timeout, *keys_opts, *args]
    return run(argv, timeout=timeout + 60)


# keygen ---------------------------------------------------------------------------------
def test_keygen_writes_0600_secret_and_never_overwrites(keys):
    assert keys.secret("c01").stat().st_mode & 0o777 == 0o600
    assert keys.public("c01").stat().st_mode & 0o777 == 0o644
    assert keys.public("c01").read_text().splitlines()[-1] == keys.c01
    before = keys.secret("c01").read_bytes()
    ctl = tool("coordctl", "COORDCTL_BIN")
    r = run([ctl, "keygen", keys.dir / "c01"])
    assert r.returncode == 1
    assert "exists: keygen never overwrites a key" in r.stderr
    assert keys.secret("c01").read_bytes() == before
    # Only the .public left over: still refused, and no secret appears.
    keys.secret("intruder").unlink()
    r = run([ctl, "keygen", keys.dir / "intruder"])
    assert r.returncode == 1 and not keys.secret("intruder").exists()
    assert run([ctl, "keygen"]).returncode == EXIT_USAGE
    assert run([ctl, "keygen", "x", "--role", "king"]).returncode == EXIT_USAGE
    r = run([ctl, "keygen", "--help"])
    assert r.returncode == 0 and "never overwritten" in r.stdout


# coord-push -----------------------------------------------------------------------------
def test_coord_push_with_its_key_is_accepted(curve_daemon, keys, tmp_path):
    r = push(curve_daemon, keys.opts("c01"), tmp_path / "outbox")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ACCEPTED event ")
    # The environment instead of options, the broker's key as Z85 text.
    r = push(curve_daemon, [], tmp_path / "outbox", title="Second rally",
             extra_env={"COORD_SERVER_KEY": keys.server, "COORD_KEY": str(keys.secret("c01"))})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ACCEPTED event ")


def test_coord_push_unknown_key_gets_no_answer(curve_daemon, keys, tmp_path):
    started = time.monotonic()
    r = push(curve_daemon, keys.opts("intruder"), tmp_path / "outbox", timeout=3)
    assert r.returncode == PUSH_WAITING, r.stderr
    assert time.monotonic() - started < 30
    assert "no answer from the broker within 3 s" in r.stderr
    assert "the broker refused this council's key" in r.stderr
    # The record waits in the outbox; nothing reached the store.
    r = coordctl(curve_daemon, keys.opts("ops"), "stats", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout).get("accepted", "0") in ("0", 0)


def test_coord_push_without_keys_or_with_the_wrong_server_key(curve_daemon, keys, tmp_path):
    r = push(curve_daemon, [], tmp_path / "plain", timeout=3)
    assert r.returncode == PUSH_WAITING, r.stderr
    # Said from the greeting's mechanism, or, when the broker closed the connection before
    # coord-push read its greeting, from the handshake ending without a word.
    assert "requires CURVE keys" in r.stderr, r.stderr
    # Encrypted to a key that is not the broker's: the broker cannot answer at all.
    r = push(curve_daemon, keys.opts("c01", server="c01"), tmp_path / "wrong", timeout=3)
    assert r.returncode == PUSH_WAITING, r.stderr
    assert "is --server-key the broker's public key?" in r.stderr


def test_coord_push_council_key_cannot_push_for_another_council(curve_daemon, keys, tmp_path):
    r = push(curve_daemon, keys.opts("c01"), tmp_path / "outbox-c02", council="c02")
    assert r.returncode == PUSH_REJECTED, r.stderr
    assert r.stdout.startswith("REJECTED"), r.stdout


def test_key_options_are_checked_before_anything_is_sent(curve_daemon, keys, tmp_path):
    loose = keys.dir / "loose.secret"
    shutil.copy(keys.secret("c01"), loose)
    loose.chmod(0o644)
    r = push(curve_daemon, ["--server-key", keys.public("server"), "--key", loose],
             tmp_path / "outbox")
    assert r.returncode == PUSH_USAGE
    assert "chmod 600" in r.stderr
    assert not (tmp_path / "outbox").exists()
    r = coordctl(curve_daemon, ["--server-key", keys.public("server"), "--key", loose],
                 "digest")
    assert r.returncode == EXIT_USAGE and "chmod 600" in r.stderr
    r = push(curve_daemon, ["--key", keys.secret("c01")], tmp_path / "outbox")
    assert r.returncode == PUSH_USAGE
    assert "--key needs the broker's public key too" in r.stderr
    r = coordctl(curve_daemon, ["--server-key", keys.public("server"), "--key",
                                keys.public("desk1")], "digest")
    assert r.returncode == EXIT_USAGE and "is a public key file" in r.stderr


def test_example_program_takes_keys_from_the_environment(curve_daemon, keys, tmp_path):
    example = os.environ.get("COORD_EXAMPLE_BIN") or str(REPO / "build" / "clients" /
                                                         "libcoord" / "coord-example")
    if not os.access(example, os.X_OK):
        pytest.skip("coord-example not built")
    argv = [example, curve_daemon.endpoint, "c01", tmp_path / "outbox"]
    r = run(argv, COORD_SERVER_KEY=str(keys.public("server")),
            COORD_KEY=str(keys.secret("c01")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ACCEPTED") == 2, r.stdout
    r = run(argv, COORD_KEY=str(keys.secret("c01")))
    assert r.returncode == 2 and "server_key: the broker's public key is missing" in r.stderr


# coordctl -------------------------------------------------------------------------------
def test_coordctl_digest_needs_a_subscriber_key_and_stats_an_admin_key(curve_daemon, keys,
                                                                       tmp_path):
    assert push(curve_daemon, keys.opts("c01"), tmp_path / "outbox").returncode == 0
    r = coordctl(curve_daemon, keys.opts("desk1"), "digest", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lastSeq"] == "1"
    r = coordctl(curve_daemon, keys.opts("ops"), "stats", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accepted"] == "1"
    r = coordctl(curve_daemon, keys.opts("desk1"), "stats")
    assert r.returncode == EXIT_BROKER, (r.returncode, r.stderr)
    assert "coordctl: the broker refused the request" in r.stderr
    # A council's key has no business on the query socket: refused in the handshake.
    started = time.monotonic()
    r = coordctl(curve_daemon, keys.opts("c01"), "digest", timeout=20)
    assert r.returncode == EXIT_UNREACHABLE
    assert "refused this client's key (status 400)" in r.stderr
    assert time.monotonic() - started < 15  # at once, not after the timeout
    r = coordctl(curve_daemon, [], "digest", timeout=20)
    assert r.returncode == EXIT_UNREACHABLE
    assert "requires CURVE keys" in r.stderr
    r = coordctl(curve_daemon, keys.opts("desk1", server="ops"), "digest", timeout=2)
    assert r.returncode == EXIT_UNREACHABLE
    assert "Is --server-key the broker's public key?" in r.stderr


# coord-watch ----------------------------------------------------------------------------
class Watch:
    def __init__(self, d, *args):
        argv = [tool("coord-watch", "COORD_WATCH_BIN"), "--publish", d.publish_endpoint,
                "--query", d.query_endpoint, *[str(a) for a in args]]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL, env=child_env())

    def line(self, timeout=15):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "coord-watch printed nothing in time"
        line = self.proc.stdout.readline()
        assert line, f"coord-watch ended: {self.proc.wait()} {self.proc.stderr.read()}"
        return json.loads(line)

    def wait(self, timeout=30):
        status = self.proc.wait(timeout)
        return status, self.proc.stdout.read(), self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_coord_watch_with_a_subscriber_key_receives_digests(curve_daemon, keys, tmp_path):
    w = Watch(curve_daemon, *keys.opts("desk1"), "--json", "--count", "2", "--timeout", "15")
    try:
        first = w.line()
        assert first["source"] == "query" and first["lastSeq"] == "0"
        assert push(curve_daemon, keys.opts("c01"), tmp_path / "outbox").returncode == 0
        second = w.line()
        assert second["source"] == "live" and second["lastSeq"] == "1"
        status, _, err = w.wait()
        assert status == 0, err
        assert not [m for m in SANITIZER_MARKERS if m in err], err
    finally:
        w.kill()


def test_coord_watch_refused_key_is_said_at_once(curve_daemon, keys):
    w = Watch(curve_daemon, *keys.opts("intruder"), "--timeout", "20")
    try:
        status, _, err = w.wait(timeout=15)
        assert status == EXIT_UNREACHABLE
        assert "refused this client's key" in err
    finally:
        w.kill()


# Python ---------------------------------------------------------------------------------
@pytest.fixture
def coordclient():
    d = os.environ.get("COORD_PYCLIENT_DIR") or str(REPO / "clients" / "python")
    if d not in sys.path:
        sys.path.insert(0, d)
    import coordclient as module
    return module


def test_python_client_pushes_asks_and_subscribes_with_keys(curve_daemon, keys, coordclient):
    sub = coordclient.watch_digests(curve_daemon.publish_endpoint, "digest/all/",
                                    server_key=keys.public("server"),
                                    key_file=keys.secret("desk1"))
    with coordclient.Client(curve_daemon.endpoint, council="c01", ack_timeout=5,
                            server_key=str(keys.public("server")),
                            key_file=keys.secret("c01")) as client:
        env = coordclient.record("c01", "event", kind="rally", country="FR", city="Lyon",
                                 date="2020-10-04", title="Rally in Lyon")
        client.push(env)
        client.flush(timeout=30)
        assert client.results[coordclient.key(env)].status == coordclient.ACCEPTED
    with coordclient.Query(curve_daemon.query_endpoint, timeout=10, server_key=keys.server,
                           key_file=keys.secret("desk1")) as q:
        assert q.digest().last_seq == 1
        with pytest.raises(coordclient.QueryError):
            q.stats()
    with coordclient.Query(curve_daemon.query_endpoint, timeout=10, server_key=keys.server,
                           key_file=keys.secret("ops")) as q:
        assert q.stats().accepted == 1
    # The broker repeats its last value to a new subscriber: the digest with the record.
    deadline = time.monotonic() + 20
    for topic, publication in sub:
        if publication.last_seq == 1 or time.monotonic() > deadline:
            break
    assert topic == "digest/all/" and publication.last_seq == 1
    sub.close()


def test_python_client_with_an_unknown_key_times_out(curve_daemon, keys, coordclient):
    with coordclient.Client(curve_daemon.endpoint, council="c01", ack_timeout=2,
                            server_key=keys.server, key_file=keys.secret("intruder")) as c:
        c.push(coordclient.record("c01", "event", kind="rally", country="FR",
                                  date="2020-10-04", title="Refused rally"))
        with pytest.raises(coordclient.Timeout):
            c.flush(timeout=3)
    loose = keys.dir / "loose.secret"
    shutil.copy(keys.secret("c01"), loose)
    loose.chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        coordclient.Client(curve_daemon.endpoint, council="c01", server_key=keys.server,
                           key_file=loose)
