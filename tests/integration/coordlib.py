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


def default_config(state_dir, endpoint):
    """The test config as {section: {key: value}} (insertion order is file order)."""
    cfg = {
        "coordd": {"state_dir": str(state_dir), "log_level": "info"},
        "ingest": {"endpoint": endpoint, "max_message_bytes": "65536", "max_batch": "1024",
                   "max_pending": "8192", "hwm": "10000"},
        "store": {"map_size": "64MiB", "map_size_max": "16GiB", "sync": "full"},
    }
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


class Council:
    """One council's client: a DEALER connected to the ingest endpoint.

    Not thread-safe: use one Council per thread. Remembers what it sent (key -> list of
    frames) and what came back (key -> list of Acks, arrival order), key being
    (msg_id, revision).
    """

    def __init__(self, endpoint, council="c01", ctx=None, timeout=20.0):
        self.endpoint = endpoint
        self.council = council
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.sock.setsockopt(zmq.RCVHWM, 200_000)
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
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

    def index(self, council, msg_id):
        key = council.encode() + b"\0" + msg_id.encode()
        with self.env.begin(db=self.index_db) as txn:
            v = txn.get(key)
            return None if v is None else self._entry(bytes(v))

    def index_entries(self):
        """{(council, msg_id): IndexEntry} for the whole index."""
        out = {}
        with self.env.begin(db=self.index_db) as txn:
            for k, v in txn.cursor():
                council, sep, msg_id = bytes(k).partition(b"\0")
                assert sep, f"index key {bytes(k)!r} has no NUL"
                out[(council.decode(), msg_id.decode())] = self._entry(bytes(v))
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
