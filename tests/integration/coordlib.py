"""coordlib: helpers for coordd's integration tests (in the spirit of mosquitto's
test/mosq_test.py).

- gen_*() build coord.v1.Envelopes with valid defaults; every field can be overridden.
- Council is one council's client: a ZeroMQ DEALER that sends Envelopes (pipelined) and
  collects Acks, correlated by (msg_id, revision).
- Store reads the daemon's LMDB environment read-only to check what was stored.

coord_pb2 must be importable (conftest.py puts COORD_PB2_DIR on sys.path). Every wait here
has a timeout; nothing sleeps.
"""

import itertools
import os
import random
import socket
import string
import struct
import time
import uuid

import zmq

import coord_pb2 as pb

# Short names for statuses and reasons, and readable names for messages.
ACCEPTED = pb.ACK_STATUS_ACCEPTED
DUPLICATE = pb.ACK_STATUS_DUPLICATE
REJECTED = pb.ACK_STATUS_REJECTED
RETRY_LATER = pb.ACK_STATUS_RETRY_LATER

DAY_MS = 86_400_000
TIME_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

# Unique per test run, so msg_ids never collide with an earlier run on a long-lived daemon
# (--coordd-endpoint).
RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count(1)

# The councils the test config registers: c01..c11, each in its own country.
COUNCILS = [
    ("c01", "Council One", "FR"),
    ("c02", "Council Two", "DE"),
    ("c03", "Council Three", "US"),
    ("c04", "Council Four", "GB"),
    ("c05", "Council Five", "RU"),
    ("c06", "Council Six", "LB"),
    ("c07", "Council Seven", "GR"),
    ("c08", "Council Eight", "CA"),
    ("c09", "Council Nine", "AR"),
    ("c10", "Council Ten", "AU"),
    ("c11", "Council Eleven", "AM"),
]
COUNCIL_IDS = [c[0] for c in COUNCILS]


def sibling_endpoint(endpoint, name):
    """For an ipc:// endpoint, the endpoint `name` beside it (ipc:///dir/name); else None."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    return "ipc://" + os.path.join(os.path.dirname(path), name)


def default_config(state_dir, endpoint, publish_endpoint=None, query_endpoint=None):
    """The test config as {section: {key: value}} (insertion order is file order).

    The publish and query endpoints default to ipc:// sockets beside an ipc:// ingest
    endpoint, so that parallel tests never share the default TCP ports."""
    publish_endpoint = publish_endpoint or sibling_endpoint(endpoint, "publish.sock")
    query_endpoint = query_endpoint or sibling_endpoint(endpoint, "query.sock")
    cfg = {
        "coordd": {"state_dir": str(state_dir), "log_level": "info"},
        "ingest": {"endpoint": endpoint, "max_message_bytes": "65536", "max_batch": "1024",
                   "max_pending": "8192", "hwm": "10000"},
    }
    if publish_endpoint:
        cfg["publish"] = {"endpoint": publish_endpoint}
    if query_endpoint:
        cfg["query"] = {"endpoint": query_endpoint}
    cfg["store"] = {"map_size": "64MiB", "map_size_max": "16GiB", "sync": "full"}
    # Off unless a test asks: parallel daemons would share the default TCP port.
    cfg["metrics"] = {"listen": "off"}
    for cid, name, country in COUNCILS:
        cfg[f"council.{cid}"] = {"name": name, "country": country}
    return cfg


def render_config(cfg):
    lines = ["# written by tests/integration/conftest.py"]
    for section, keys in cfg.items():
        lines.append(f"[{section}]")
        for k, v in keys.items():
            lines.append(f"{k} = {v}")
        lines.append("")
    return "\n".join(lines)


def now_ms():
    return int(time.time() * 1000)


def day_ms(offset_days=0):
    """00:00 UTC of today + offset_days, in Unix ms (how the wire carries a date)."""
    today = now_ms() // DAY_MS * DAY_MS
    return today + offset_days * DAY_MS


def new_msg_id(prefix="m"):
    return f"{prefix}-{RUN_ID}-{next(_counter)}"


def free_tcp_port():
    """A 127.0.0.1 TCP port that was free a moment ago (for a tcp:// endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_name(status):
    try:
        return pb.AckStatus.Name(status)
    except ValueError:
        return f"status {status}"


def reason_name(reason):
    try:
        return pb.Reason.Name(reason)
    except ValueError:
        return f"reason {reason}"


def ack_str(ack):
    return (f"Ack(msg_id={ack.msg_id!r}, revision={ack.revision}, "
            f"status={status_name(ack.status)}, seq={ack.seq}, "
            f"reason={reason_name(ack.reason)}, message={ack.message!r})")


# ---------------------------------------------------------------------------------------
# Envelopes

def _body_defaults(body):
    if body == "event":
        return dict(kind=pb.EVENT_KIND_RALLY, country="FR", city="Paris", date=day_ms(-1),
                    title="Rally for recognition", organiser="Conseil de coordination",
                    participants=250, languages=["fr", "hy"])
    if body == "letter":
        return dict(recipient_kind=pb.RECIPIENT_KIND_PARLIAMENT, recipient="Deutscher Bundestag",
                    recipient_country="DE", language="de", subject="Bitte um Anerkennung",
                    sent_at=day_ms(-2), channel=pb.LETTER_CHANNEL_POST)
    if body == "statement":
        return dict(organisation="Union of Students", country="AM", languages=["hy", "en"],
                    date=day_ms(-1), title="Appeal to the international community")
    if body == "petition":
        return dict(target_kind=pb.PETITION_TARGET_NATIONAL_PARLIAMENT,
                    target="Assemblée nationale", country="FR", date=day_ms(-3),
                    signatures=12000, title="Pétition pour la reconnaissance", language="fr")
    if body == "media":
        return dict(kind=pb.MEDIA_KIND_ARTICLE, outlet="Le Monde", country="FR", language="fr",
                    date=day_ms(-1), local_sources=3, title="Des milliers de manifestants",
                    url="https://example.org/article/1")
    if body == "retraction":
        return dict(reason="entered twice by mistake")
    raise ValueError(f"unknown body {body!r}")


BODIES = ["event", "letter", "statement", "petition", "media"]


def gen_envelope(body="event", *, council="c01", msg_id=None, revision=1, created_at=None,
                 **fields):
    """Build a valid Envelope with a `body` ("event", "letter", "statement", "petition",
    "media", "retraction", or None for no body).

    Overrides: msg_id=None picks a fresh unique id; created_at=None means now (0 leaves it
    unset); "" or 0 leave a field empty. Body fields are keyword arguments; a body field set
    to None is left unset, a list replaces a repeated field.
    """
    env = pb.Envelope()
    env.council = council
    env.msg_id = new_msg_id() if msg_id is None else msg_id
    env.revision = revision
    env.created_at = now_ms() if created_at is None else created_at
    if body is None:
        if fields:
            raise ValueError("body fields given for an envelope without a body")
        return env
    values = _body_defaults(body)
    values.update(fields)
    sub = getattr(env, body)
    sub.SetInParent()  # a Retraction with no fields still selects the oneof
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            del getattr(sub, name)[:]
            getattr(sub, name).extend(value)
        else:
            setattr(sub, name, value)
    return env


def gen_event(**kw):
    return gen_envelope("event", **kw)


def gen_letter(**kw):
    return gen_envelope("letter", **kw)


def gen_statement(**kw):
    return gen_envelope("statement", **kw)


def gen_petition(**kw):
    return gen_envelope("petition", **kw)


def gen_media(**kw):
    return gen_envelope("media", **kw)


def gen_retraction(**kw):
    return gen_envelope("retraction", **kw)


def envelope_key(env):
    return (env.msg_id, env.revision)


def _set_path(msg, path, value):
    *parents, leaf = path.split(".")
    for p in parents:
        msg = getattr(msg, p)
    setattr(msg, leaf, value)


def with_raw_bytes(env, path, raw):
    """Serialize `env` with the string field at `path` (e.g. "event.title", "msg_id")
    holding the bytes `raw` verbatim. python-protobuf will not serialize invalid UTF-8, so
    this sets a same-length ASCII placeholder and replaces it in the encoded bytes (the
    length prefix stays right)."""
    assert len(raw) >= 6, "use at least 6 bytes so the placeholder is unique"
    rng = random.Random()
    for _ in range(10):
        placeholder = "".join(rng.choice(string.ascii_letters) for _ in range(len(raw)))
        _set_path(env, path, placeholder)
        data = env.SerializeToString()
        if data.count(placeholder.encode()) == 1:
            return data.replace(placeholder.encode(), raw)
    raise AssertionError("could not place a unique placeholder")


# ---------------------------------------------------------------------------------------
# The council client

class AckTimeout(AssertionError):
    pass


# CURVE ----------------------------------------------------------------------------------
class Keypair:
    """A CURVE keypair as Z85 bytes (zmq.curve_keypair())."""

    def __init__(self):
        self.public, self.secret = zmq.curve_keypair()


def apply_curve(sock, curve):
    """Make `sock` a CURVE client before it connects. `curve` is (server_public, Keypair)."""
    if curve is None:
        return
    server_public, keypair = curve
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)


def write_key_file(path, z85, mode=0o600):
    """Write a key file as auth_keygen does ("# comment" then the Z85 key), with `mode`."""
    key = z85.decode() if isinstance(z85, bytes) else z85
    text = f"# coordd CURVE key written by the tests\n{key}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def render_keys_file(entries):
    """The allowlist text for entries [(role, id, Keypair or Z85 public key)]."""
    lines = ["# written by the tests"]
    for role, ident, key in entries:
        public = key.public if isinstance(key, Keypair) else key
        lines.append(f"[{role}.{ident}]")
        lines.append(f"public_key = {public.decode() if isinstance(public, bytes) else public}")
    return "\n".join(lines) + "\n"


class CurveKeys:
    """The server's keypair and one client keypair per role used in these tests, with the
    files coordd reads."""

    def __init__(self, directory):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server = Keypair()
        self.c01 = Keypair()
        self.c02 = Keypair()
        self.desk = Keypair()   # subscriber.desk
        self.ops = Keypair()    # admin.ops
        self.secret_path = write_key_file(self.dir / "server.secret", self.server.secret)
        self.keys_path = self.dir / "keys.ini"
        self.entries = [("council", "c01", self.c01), ("council", "c02", self.c02),
                        ("subscriber", "desk", self.desk), ("admin", "ops", self.ops)]
        self.write()

    def write(self, entries=None):
        self.keys_path.write_text(render_keys_file(self.entries if entries is None
                                                   else entries))

    def section(self):
        return {"secret_key_file": str(self.secret_path), "keys_file": str(self.keys_path)}

    def curve(self, keypair):
        return (self.server.public, keypair)


def secure_daemon(factory, tmp_path, name="sec", extra=None, start=True):
    """A daemon (from the coordd_factory fixture) whose sockets are all CURVE, with the
    keys of a CurveKeys (d.keys) and /metrics on a free port (d.metrics_port)."""
    keys = CurveKeys(tmp_path / f"{name}-keys")
    port = free_tcp_port()
    overrides = {"security": keys.section(), "metrics": {"listen": f"127.0.0.1:{port}"}}
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    d = factory(name, overrides=overrides, start=start)
    d.keys = keys
    d.metrics_port = port
    return d


class Council:
    """One council's client: a DEALER connected to the ingest endpoint.

    Not thread-safe: use one Council per thread. Remembers what it sent (key -> list of
    frames) and what came back (key -> list of Acks, arrival order), key being
    (msg_id, revision).
    """

    def __init__(self, endpoint, council="c01", ctx=None, timeout=20.0, curve=None):
        self.endpoint = endpoint
        self.council = council
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.sock.setsockopt(zmq.RCVHWM, 200_000)
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        apply_curve(self.sock, curve)
        self.sock.connect(endpoint)
        self.sent = {}
        self.acks = {}
        self.arrivals = []
        self.outstanding = 0

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # building ------------------------------------------------------------------------
    def env(self, body="event", **kw):
        kw.setdefault("council", self.council)
        return gen_envelope(body, **kw)

    # sending -------------------------------------------------------------------------
    def send(self, msg):
        """Send one message: an Envelope, raw bytes (one frame) or a list of frames
        (a multi-frame message). Returns the bytes of the (first) frame."""
        if isinstance(msg, pb.Envelope):
            data = msg.SerializeToString()
            self.sent.setdefault(envelope_key(msg), []).append(data)
            self.sock.send(data)
        elif isinstance(msg, (bytes, bytearray)):
            data = bytes(msg)
            self.sock.send(data)
        else:
            frames = [bytes(f) for f in msg]
            data = frames[0] if frames else b""
            self.sock.send_multipart(frames)
        self.outstanding += 1
        return data

    def send_keyed(self, key, data):
        """Send pre-serialized Envelope bytes known to carry `key`."""
        self.sent.setdefault(key, []).append(data)
        self.sock.send(data)
        self.outstanding += 1

    # receiving -----------------------------------------------------------------------
    def _take(self, flags=0):
        frames = self.sock.recv_multipart(flags)
        assert len(frames) == 1, f"an Ack must be one frame, got {len(frames)}: {frames!r}"
        try:
            ack = pb.Ack.FromString(frames[0])
        except Exception as e:  # noqa: BLE001 - any decode error is a daemon bug
            raise AssertionError(f"undecodable Ack {frames[0]!r}: {e}") from e
        self.acks.setdefault((ack.msg_id, ack.revision), []).append(ack)
        self.arrivals.append(ack)
        self.outstanding -= 1
        return ack

    def recv_ack(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise AckTimeout(f"no Ack within {timeout} s ({self.outstanding} outstanding)")
        return self._take()

    def collect(self, n, timeout=None):
        """Receive n Acks; `timeout` bounds the wait for each one."""
        return [self.recv_ack(timeout) for _ in range(n)]

    def drain(self, idle=0.5):
        """Take Acks until none arrives for `idle` seconds. Used only once the daemon is
        gone, to pick up Acks already queued on our side."""
        got = []
        while self.sock.poll(int(idle * 1000), zmq.POLLIN):
            got.append(self._take())
        return got

    def request(self, msg, timeout=None):
        """Send one message and return its Ack (nothing else may be in flight)."""
        assert self.outstanding == 0, f"{self.outstanding} Acks still outstanding"
        self.send(msg)
        return self.recv_ack(timeout)

    def push_all(self, items, window=256, idle_timeout=None, stop=None, on_ack=None):
        """Pipeline `items` ((key, bytes) pairs of serialized Envelopes) with up to
        `window` in flight; returns the Acks in arrival order.

        Fails when no Ack arrives for `idle_timeout` seconds. When the threading.Event
        `stop` is set, stops sending, takes the Acks already queued and returns.
        `on_ack(ack)` is called for each Ack."""
        idle_timeout = self.timeout if idle_timeout is None else idle_timeout
        got = []
        i = 0
        n = len(items)
        start_outstanding = self.outstanding
        while i < n or self.outstanding > start_outstanding:
            if stop is not None and stop.is_set():
                for ack in self.drain(0.5):
                    got.append(ack)
                    if on_ack:
                        on_ack(ack)
                return got
            while i < n and self.outstanding - start_outstanding < window:
                key, data = items[i]
                self.send_keyed(key, data)
                i += 1
            # Wake up regularly to notice `stop`, but fail after idle_timeout with no Ack.
            deadline = time.monotonic() + idle_timeout
            while not self.sock.poll(100, zmq.POLLIN):
                if stop is not None and stop.is_set():
                    break
                if time.monotonic() > deadline:
                    raise AckTimeout(f"{self.council}: no Ack for {idle_timeout} s; "
                                     f"{i}/{n} sent, {self.outstanding} outstanding")
            for _ in range(4096):
                try:
                    ack = self._take(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got.append(ack)
                if on_ack:
                    on_ack(ack)
        return got

    def acks_for(self, key):
        return self.acks.get(key, [])


def expect_ack(ack, status, reason=None, msg_id=None, revision=None, seq=None):
    """Assert the fields of one Ack, with a readable failure message."""
    what = ack_str(ack)
    assert ack.status == status, f"expected {status_name(status)}, got {what}"
    if reason is not None:
        reasons = reason if isinstance(reason, (tuple, list, set)) else (reason,)
        assert ack.reason in reasons, (
            f"expected reason {' or '.join(reason_name(r) for r in reasons)}, got {what}")
    if status == REJECTED:
        assert ack.message, f"REJECTED without a message: {what}"
        assert ack.seq == 0, f"REJECTED with a seq: {what}"
    if status in (ACCEPTED, DUPLICATE):
        assert ack.seq >= 1, f"{status_name(status)} without a seq: {what}"
        assert ack.reason == pb.REASON_NONE, f"{status_name(status)} with a reason: {what}"
    if msg_id is not None:
        assert ack.msg_id == msg_id, f"expected msg_id {msg_id!r}, got {what}"
    if revision is not None:
        assert ack.revision == revision, f"expected revision {revision}, got {what}"
    if seq is not None:
        assert ack.seq == seq, f"expected seq {seq}, got {what}"
    return ack


# ---------------------------------------------------------------------------------------
# The store, read directly

class IndexEntry:
    __slots__ = ("seq", "revision", "flags")

    def __init__(self, seq, revision, flags):
        self.seq, self.revision, self.flags = seq, revision, flags

    @property
    def retracted(self):
        return bool(self.flags & 1)

    def __repr__(self):
        return f"IndexEntry(seq={self.seq}, revision={self.revision}, flags={self.flags:#x})"


def seq_key(seq):
    return struct.pack(">Q", seq)


# The fixed SipHash-2-4 key of the index hash (daemon/store.c: index_hash_key).
INDEX_HASH_KEY = b"coordd.index.v4\0"
_M64 = (1 << 64) - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash24(key, data):
    """SipHash-2-4 of bytes under a 16-byte key (daemon/siphash.h: siphash24)."""
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d,
         k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573]

    def rounds(n):
        for _ in range(n):
            v[0] = (v[0] + v[1]) & _M64
            v[1] = _rotl(v[1], 13) ^ v[0]
            v[0] = _rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & _M64
            v[3] = _rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & _M64
            v[3] = _rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & _M64
            v[1] = _rotl(v[1], 17) ^ v[2]
            v[2] = _rotl(v[2], 32)

    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = struct.unpack_from("<Q", data, i)[0]
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    last = ((len(data) & 0xff) << 56) | int.from_bytes(data[end:], "little")
    v[3] ^= last
    rounds(2)
    v[0] ^= last
    v[2] ^= 0xff
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def index_key(council, msg_id):
    """The index key of a record in a store of schema 4 (daemon/store.h store_index_key()):
    the high 32 bits of the SipHash-2-4 of council "\\0" msg_id without its last 2 bytes, the
    low 32 bits of that of council "\\0" msg_id; u64 big-endian."""
    whole = council.encode() + b"\0" + msg_id.encode()
    group = whole[:len(whole) - min(2, len(msg_id.encode()))]
    h = (siphash24(INDEX_HASH_KEY, group) & ~0xffffffff) | (siphash24(INDEX_HASH_KEY, whole)
                                                          & 0xffffffff)
    return struct.pack(">Q", h)


class Store:
    """The daemon's LMDB environment, opened read-only.

    lock=True is safe while the daemon runs; lock=False only once it has stopped. Close it
    (or use `with`) before starting a daemon on the same directory."""

    def __init__(self, state_dir, lock=True):
        import lmdb  # python3-lmdb; only the local tests need it

        self.env = lmdb.open(str(state_dir), readonly=True, max_dbs=8, lock=lock, create=False)
        self.items_db = self.env.open_db(b"items", create=False)
        self.index_db = self.env.open_db(b"index", create=False)
        self.meta_db = self.env.open_db(b"meta", create=False)

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def item_count(self):
        with self.env.begin() as txn:
            return txn.stat(self.items_db)["entries"]

    def index_count(self):
        with self.env.begin() as txn:
            return txn.stat(self.index_db)["entries"]

    @staticmethod
    def _item(key, value):
        assert len(key) == 8, f"items key {key!r} is not 8 bytes"
        seq = struct.unpack(">Q", key)[0]
        item = pb.Item.FromString(value)
        assert item.seq == seq, f"item under key {seq} says seq {item.seq}"
        return item

    def items(self):
        """All Items in seq order."""
        with self.env.begin(db=self.items_db) as txn:
            return [self._item(bytes(k), bytes(v)) for k, v in txn.cursor()]

    def item(self, seq):
        with self.env.begin(db=self.items_db) as txn:
            v = txn.get(seq_key(seq))
            return None if v is None else self._item(seq_key(seq), bytes(v))

    @staticmethod
    def _entry(value):
        assert len(value) == 13, f"index value {value!r} is not 13 bytes"
        seq, revision, flags = struct.unpack(">QIB", value)
        return IndexEntry(seq, revision, flags)

    def _names(self, txn, seq):
        """(council, msg_id) of the item at seq, or None when there is none."""
        v = txn.get(seq_key(seq), db=self.items_db)
        if v is None:
            return None
        item = pb.Item.FromString(bytes(v))
        return item.council, pb.Envelope.FromString(item.envelope).msg_id

    def index(self, council, msg_id):
        """The record's entry: among the duplicates under its hash, the one whose item is
        of (council, msg_id)."""
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.index_db)
            if not cur.set_key(index_key(council, msg_id)):
                return None
            for v in cur.iternext_dup():
                entry = self._entry(bytes(v))
                if self._names(txn, entry.seq) == (council, msg_id):
                    return entry
            return None

    def index_entries(self):
        """{(council, msg_id): IndexEntry} for the whole index, each entry named by the item
        it points at, and checked to be under that record's hash, once."""
        out = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.index_db):
                entry = self._entry(bytes(v))
                names = self._names(txn, entry.seq)
                assert names is not None, f"index entry {entry} -> missing seq {entry.seq}"
                assert bytes(k) == index_key(*names), (
                    f"index entry {entry} of {names} is not under its hash")
                assert names not in out, f"index has two entries for {names}"
                out[names] = entry
        return out

    def schema_version(self):
        with self.env.begin(db=self.meta_db) as txn:
            v = txn.get(b"schema_version")
            assert v is not None, "meta has no schema_version"
            assert len(v) == 4, f"schema_version {bytes(v)!r} is not 4 bytes"
            return struct.unpack(">I", bytes(v))[0]


def check_store_invariants(store):
    """What must hold for any store: seqs 1..N without gaps; each Item names the council
    its envelope carries; no (council, msg_id, revision) stored twice; each index entry
    points at the Item of its latest revision, flagged retracted iff that Item is a
    Retraction. Returns (items by seq, {(council, msg_id, revision): seq}, index)."""
    items = store.items()
    seqs = [it.seq for it in items]
    assert seqs == list(range(1, len(items) + 1)), (
        f"item seqs are not 1..{len(items)} without gaps: {_ranges(seqs)}")
    by_seq = {}
    stored = {}
    for it in items:
        env = pb.Envelope.FromString(it.envelope)
        assert it.council == env.council, f"item {it.seq}: council {it.council!r} != {env.council!r}"
        key = (env.council, env.msg_id, env.revision)
        assert key not in stored, f"{key} stored twice: seqs {stored[key]} and {it.seq}"
        stored[key] = it.seq
        by_seq[it.seq] = (it, env)
    index = store.index_entries()
    for (council, msg_id), entry in index.items():
        assert entry.seq in by_seq, f"index {council}/{msg_id} -> missing seq {entry.seq}"
        it, env = by_seq[entry.seq]
        assert (env.council, env.msg_id, env.revision) == (council, msg_id, entry.revision), (
            f"index {council}/{msg_id} {entry} points at {env.council}/{env.msg_id} "
            f"rev {env.revision}")
        assert entry.retracted == (env.WhichOneof("body") == "retraction"), (
            f"index {council}/{msg_id} {entry}: retracted flag disagrees with the item")
    latest = {}
    for (council, msg_id, revision), seq in stored.items():
        if revision > latest.get((council, msg_id), (0, 0))[0]:
            latest[(council, msg_id)] = (revision, seq)
    assert set(latest) == set(index), "index keys differ from the stored records"
    for k, (revision, seq) in latest.items():
        assert index[k].revision == revision and index[k].seq == seq, (
            f"index {k} = {index[k]}, but the latest stored revision is {revision} at seq {seq}")
    return by_seq, stored, index


def _ranges(seqs, limit=10):
    """Compact description of a list of ints for failure messages."""
    out = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out[:limit])
    return text + (" ..." if len(out) > limit else "")


# ---------------------------------------------------------------------------------------
# Headquarters' side: the query socket, the publish socket, process memory

class QueryTimeout(AssertionError):
    pass


class Query:
    """A query client: a DEALER (or REQ with req=True) on the query socket. Each request
    gets a fresh request_id and its answer must echo it."""

    def __init__(self, endpoint, timeout=20.0, ctx=None, req=False, curve=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.REQ if req else zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        apply_curve(self.sock, curve)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, frames):
        self.sock.send_multipart([bytes(f) for f in frames])

    def recv_raw(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise QueryTimeout(f"no answer from {self.endpoint} within {timeout} s")
        return self.sock.recv_multipart()

    def ask_raw(self, data, timeout=None):
        """Send one request frame; returns the answer decoded (one frame expected)."""
        self.send_raw([data])
        frames = self.recv_raw(timeout)
        assert len(frames) == 1, f"an answer must be one frame, got {len(frames)}"
        return pb.QueryResponse.FromString(frames[0])

    def ask(self, req, timeout=None):
        if not req.request_id:
            req.request_id = next(self._ids)
        resp = self.ask_raw(req.SerializeToString(), timeout)
        assert resp.request_id == req.request_id, (
            f"request_id {req.request_id} answered as {resp.request_id}")
        return resp

    def _expect(self, resp, field):
        which = resp.WhichOneof("body")
        if which == "error":
            raise AssertionError(f"query error: {resp.error.message}")
        assert which == field, f"expected {field}, got {which}"
        return getattr(resp, field)

    def digest(self, kind=pb.SCOPE_KIND_ALL, scope_id="", window=pb.WINDOW_ALL, start=0,
               end=0, headlines=0):
        req = pb.QueryRequest()
        req.digest.scope.kind = kind
        req.digest.scope.id = scope_id
        req.digest.window = window
        req.digest.start = start
        req.digest.end = end
        req.digest.headlines = headlines
        return self._expect(self.ask(req), "digest")

    def history(self, after_seq=0, limit=0, council=""):
        req = pb.QueryRequest()
        req.history.after_seq = after_seq
        req.history.limit = limit
        req.history.council = council
        return self._expect(self.ask(req), "history")

    def history_all(self, after_seq=0, limit=0, council=""):
        """Every item after after_seq, page by page; returns (items, pages)."""
        items, pages = [], 0
        while True:
            page = self.history(after_seq, limit, council)
            pages += 1
            items.extend(page.items)
            assert page.next_after_seq >= after_seq
            if page.complete:
                return items, pages
            assert page.next_after_seq > after_seq, "an incomplete page made no progress"
            after_seq = page.next_after_seq

    def status(self, council, msg_id):
        req = pb.QueryRequest()
        req.status.council = council
        req.status.msg_id = msg_id
        return self._expect(self.ask(req), "status")

    def stats(self):
        req = pb.QueryRequest()
        req.stats.SetInParent()
        return self._expect(self.ask(req), "stats")


class PublicationTimeout(AssertionError):
    pass


class Subscriber:
    """A SUB socket on the publish socket. recv() returns (topic, Publication)."""

    def __init__(self, endpoint, topics=(), ctx=None, rcvhwm=None, timeout=20.0, curve=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        apply_curve(self.sock, curve)
        self.sock.connect(endpoint)
        for t in topics:
            self.subscribe(t)

    def subscribe(self, topic):
        self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode() if isinstance(topic, str) else topic)

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def recv(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise PublicationTimeout(f"no publication within {timeout} s")
        frames = self.sock.recv_multipart()
        assert len(frames) == 2, f"a publication is two frames, got {len(frames)}"
        topic = frames[0].decode()
        pub = pb.Publication.FromString(frames[1])
        assert pub.topic == topic, f"frame topic {topic!r} != Publication.topic {pub.topic!r}"
        assert topic.endswith("/"), f"topic {topic!r} does not end in '/'"
        return topic, pub

    def recv_until(self, pred, timeout=None):
        """Receive until pred(topic, pub) is true; returns that (topic, pub)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublicationTimeout(f"no matching publication within {timeout} s")
            topic, pub = self.recv(left)
            if pred(topic, pub):
                return topic, pub

    def pending(self, timeout=0):
        """Everything already waiting (or arriving within `timeout` of the last one)."""
        got = []
        while self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            got.append(self.recv(0))
        return got


def proc_rss_kb(pid):
    """{'VmRSS': kB, 'RssAnon': kB, 'VmHWM': kB} of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


# ---------------------------------------------------------------------------------------
# A synthetic campaign, and the digest recounted from it independently of the broker

HOUR_MS = 3_600_000

CATEGORY_OF_BODY = {"event": pb.CATEGORY_EVENT, "letter": pb.CATEGORY_LETTER,
                    "statement": pb.CATEGORY_STATEMENT, "petition": pb.CATEGORY_PETITION,
                    "media": pb.CATEGORY_MEDIA}

CAMPAIGN_COUNTRIES = [
    "AM", "FR", "DE", "US", "GB", "RU", "LB", "GR", "CA", "AR", "AU", "IT", "ES", "NL", "BE",
    "CH", "AT", "SE", "NO", "DK", "FI", "PL", "CZ", "HU", "RO", "BG", "UA", "GE", "IR", "SY",
    "EG", "TR", "CY", "IL", "JO", "AE", "QA", "KW", "IN", "CN", "JP", "KR", "BR", "UY", "CL",
    "MX", "VE", "CO", "ZA", "ET", "KZ", "UZ", "IE", "PT", "LU", "LT", "LV", "EE", "SK", "SI",
    "HR", "RS", "BA", "AL", "MK", "MT", "IS", "NZ", "SG", "TH",
]
CAMPAIGN_LANGUAGES = [
    "hy", "hy-AM", "en", "en-GB", "en-US", "fr", "fr-CA", "de", "de-AT", "ru", "ar", "el",
    "es", "es-AR", "it", "nl", "sv", "no", "da", "fi", "pl", "cs", "hu", "ro", "bg", "uk",
    "ka", "fa", "tr", "he", "pt", "pt-BR", "zh", "ja", "ko", "hi", "kk", "uz", "sr", "hr",
    "sk", "sl", "lt", "lv", "et", "sq", "mk", "is", "ga", "hyw",
]


def envelope_category(env):
    body = env.WhichOneof("body")
    return None if body in (None, "retraction") else body


def contribution(env):
    """What one live Envelope adds to a digest line: (category, kind, date, country, sum,
    languages) with languages the distinct primary subtags in lower case. Written from
    docs/PROTOCOL.md, not from the broker's code."""
    body = env.WhichOneof("body")
    b = getattr(env, body)
    if body == "event":
        kind, date, country, total, tags = b.kind, b.date, b.country, b.participants, list(
            b.languages)
    elif body == "letter":
        kind, date, country, total, tags = (b.recipient_kind, b.sent_at, b.recipient_country, 0,
                                            [b.language])
    elif body == "statement":
        kind, date, country, total, tags = 0, b.date, b.country, 0, list(b.languages)
    elif body == "petition":
        kind, date, country, total, tags = (b.target_kind, b.date, b.country, b.signatures,
                                            [b.language] if b.language else [])
    elif body == "media":
        kind, date, country, total, tags = b.kind, b.date, b.country, b.local_sources, [
            b.language]
    else:
        raise ValueError(body)
    langs = {t.split("-")[0].lower() for t in tags if t}
    return CATEGORY_OF_BODY[body], kind, date, country, total, langs


def recount(live, scope_kind=pb.SCOPE_KIND_ALL, scope_id="", start=None, end=None):
    """The digest lines of `live` ({(council, msg_id): Envelope}, the live revisions) for a
    scope and the window [start, end) (None: unbounded), as
    {(category, kind): (count, sum, {country: n}, {language: n}, {council: n})}."""
    lines = {}
    for (council, _msg_id), env in live.items():
        cat, kind, date, country, total, langs = contribution(env)
        if scope_kind == pb.SCOPE_KIND_COUNCIL and council != scope_id:
            continue
        if scope_kind == pb.SCOPE_KIND_COUNTRY and country != scope_id:
            continue
        if start is not None and not (start <= date < end):
            continue
        line = lines.setdefault((cat, kind), [0, 0, {}, {}, {}])
        line[0] += 1
        line[1] += total
        line[2][country] = line[2].get(country, 0) + 1
        for lang in langs:
            line[3][lang] = line[3].get(lang, 0) + 1
        line[4][council] = line[4].get(council, 0) + 1
    return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in lines.items()}


def digest_lines(digest):
    """A Digest's lines in recount()'s shape; checks their order and the codes' order."""
    out = {}
    keys = [(line.category, line.kind) for line in digest.lines]
    assert keys == sorted(keys), f"digest lines not sorted by (category, kind): {keys}"
    for line in digest.lines:
        assert line.count > 0, f"line {line.category}/{line.kind} with count 0"
        codes = []
        for lst in (line.countries, line.languages, line.councils):
            names = [c.code for c in lst]
            assert names == sorted(names) and len(set(names)) == len(names), (
                f"codes not sorted and unique: {names}")
            assert all(c.count > 0 for c in lst), f"a code with count 0 in {names}"
            codes.append({c.code: c.count for c in lst})
        out[(line.category, line.kind)] = (line.count, line.sum, *codes)
    return out


def live_records(envelopes):
    """{(council, msg_id): Envelope} of the live revisions among `envelopes` (an iterable
    of stored Envelopes): the highest revision of each record unless it is a Retraction."""
    latest = {}
    for env in envelopes:
        key = (env.council, env.msg_id)
        if key not in latest or env.revision > latest[key].revision:
            latest[key] = env
    return {k: e for k, e in latest.items() if e.WhichOneof("body") != "retraction"}


class Campaign:
    """A synthetic campaign: records across councils, countries and languages, with
    corrections (a later revision with another body), retractions, and retractions undone.

    Record dates spread over the last nine weeks, with a share in the last day and the last
    hour, and a few in the coming month. `sends` holds, per council, the (key, bytes) of
    every revision in the order a council would send them (all first revisions, then the
    second ones, then the third ones)."""

    def __init__(self, n_records=4000, seed=1915, now=None, councils=None, prefix="camp"):
        self.rng = random.Random(seed)
        self.now = now_ms() if now is None else now
        self.councils = councils or COUNCIL_IDS
        self.revisions = {}  # (council, msg_id) -> [Envelope, ...] by revision
        for i in range(n_records):
            council = self.councils[i % len(self.councils)]
            msg_id = f"{prefix}-{RUN_ID}-{i}"
            revs = [self._envelope(council, msg_id, 1)]
            roll = self.rng.random()
            if roll < 0.10:  # corrected
                revs.append(self._envelope(council, msg_id, 2))
            elif roll < 0.16:  # retracted
                revs.append(gen_envelope("retraction", council=council, msg_id=msg_id,
                                         revision=2))
            elif roll < 0.18:  # retracted, then restored with a new body
                revs.append(gen_envelope("retraction", council=council, msg_id=msg_id,
                                         revision=2))
                revs.append(self._envelope(council, msg_id, 3))
            self.revisions[(council, msg_id)] = revs

    def _date(self):
        r = self.rng.random()
        if r < 0.08:
            return self.now - self.rng.randrange(1, HOUR_MS - 60_000)
        if r < 0.20:
            return self.now - self.rng.randrange(HOUR_MS, 24 * HOUR_MS)
        if r < 0.25:
            return self.now + self.rng.randrange(60_000, 30 * DAY_MS)
        return self.now - self.rng.randrange(DAY_MS, 63 * DAY_MS)

    def _langs(self, lo=0, hi=3):
        return self.rng.sample(CAMPAIGN_LANGUAGES, self.rng.randint(lo, hi))

    def _envelope(self, council, msg_id, revision):
        rng = self.rng
        body = rng.choices(["event", "letter", "statement", "petition", "media"],
                           [30, 35, 10, 5, 20])[0]
        country = rng.choice(CAMPAIGN_COUNTRIES)
        date = self._date()
        n = rng.randrange(1_000_000)
        if body == "event":
            kind = rng.choice([pb.EVENT_KIND_RALLY] * 4 + list(range(2, 14)))
            f = dict(kind=kind, country=country, date=date, title=f"Event {n}",
                     participants=rng.choice([0, rng.randrange(1, 5000)]),
                     languages=self._langs())
        elif body == "letter":
            f = dict(recipient_kind=rng.randrange(1, 8), recipient=f"Recipient {n}",
                     recipient_country=country, language=rng.choice(CAMPAIGN_LANGUAGES),
                     subject=rng.choice(["", f"Letter {n}"]), sent_at=date,
                     channel=rng.randrange(0, 6))
        elif body == "statement":
            f = dict(organisation=f"Organisation {n}", country=country,
                     languages=self._langs(1, 4), date=date, title=f"Statement {n}")
        elif body == "petition":
            f = dict(target_kind=rng.randrange(1, 4), target=f"Parliament {n}",
                     country=country, date=date, signatures=rng.randrange(0, 200_000),
                     title=f"Petition {n}", language=rng.choice([""] + CAMPAIGN_LANGUAGES))
        else:
            f = dict(kind=rng.randrange(1, 4), outlet=f"Outlet {n}", country=country,
                     language=rng.choice(CAMPAIGN_LANGUAGES), date=date,
                     local_sources=rng.choice([0, rng.randrange(1, 400)]),
                     title=f"Report {n}", url="")
        return gen_envelope(body, council=council, msg_id=msg_id, revision=revision, **f)

    def sends(self):
        """{council: [(key, bytes), ...]} in sending order."""
        out = {c: [] for c in self.councils}
        depth = max(len(r) for r in self.revisions.values())
        for level in range(depth):
            for (council, _msg_id), revs in self.revisions.items():
                if level < len(revs):
                    env = revs[level]
                    out[council].append((envelope_key(env), env.SerializeToString()))
        return out

    def envelope(self, council, msg_id, revision):
        return self.revisions[(council, msg_id)][revision - 1]

    def live(self, acked=None):
        """The live records if every revision in `acked` ({(council, msg_id, revision)};
        None: all of them) is stored."""
        stored = []
        for (council, msg_id), revs in self.revisions.items():
            for env in revs:
                if acked is None or (council, msg_id, env.revision) in acked:
                    stored.append(env)
        return live_records(stored)


def push_parallel(daemon, sends, window=256, on_ack=None, stop=None, idle_timeout=30.0):
    """Push {council: [(key, bytes)]} with one Council per council in threads. Returns
    {council: [Ack, ...]}; re-raises the first thread failure."""
    import threading

    results, errors = {}, []

    def run(council, items):
        try:
            with daemon.council(council) as c:
                results[council] = c.push_all(items, window=window, on_ack=on_ack, stop=stop,
                                              idle_timeout=idle_timeout)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c, items)) for c, items in sends.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def metric_samples(port, timeout=10):
    """GET /metrics on 127.0.0.1:port; returns {'name{labels}': value} ('name' without
    labels), parsed line by line from the Prometheus text format."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples
