"""coordclient: a small Python client for coordd (councils push records, headquarters
watches digests), over pyzmq and the protobuf classes generated from proto/coord.proto.

    import coordclient

    with coordclient.Client("tcp://127.0.0.1:7701", council="fr") as client:
        env = coordclient.record("fr", "event", kind="rally", country="FR", city="Paris",
                                 date="2020-10-04", title="Rally for recognition")
        client.push(env)                  # pipelined: returns at once (unless the window is full)
        client.flush(timeout=30)          # wait for every answer
        print(client.results[coordclient.key(env)])

Push semantics (docs/PROTOCOL.md): one Envelope frame per record on a DEALER socket, up to
`max_in_flight` unanswered at a time; acks are matched to records by (msg_id, revision),
never by order. ACCEPTED and DUPLICATE are final and fine; REJECTED is final with a reason;
RETRY_LATER is resent after an exponential backoff; a record unanswered after
`ack_timeout` seconds is resent on a fresh connection. The broker de-duplicates by
(council, msg_id, revision), so resending is always safe.

Unlike libcoord (C) this client keeps its queue in memory only: records not yet answered
when the process dies are lost to it (resend them, or use coord-push/libcoord, whose
outbox is on disk). msg_ids derived by record() are the same as libcoord's and
coord-push's, so the same record pushed by either is stored once.

CURVE: a broker that requires keys admits a client whose public key is in its keys file.
Every client here takes `server_key=` (the broker's public key: 40 Z85 characters, or the
path of its .public file) and `key_file=` (this client's NAME.secret from `coordctl keygen`,
mode 0600): Client for a council, Query and watch_digests() for headquarters (a subscriber
key; stats and export need an admin key). load_keys() reads them as the C tools do.

    with coordclient.Client(endpoint, council="fr", server_key="broker.public",
                            key_file="fr.secret") as client: ...

The generated module coord_pb2 is found through $COORD_PB2_DIR, else the build directory
next to this file (build/proto), else the normal import path. Use Debian's
/usr/bin/python3 (python3-zmq, python3-protobuf).
"""

import collections
import datetime
import hashlib
import os
import random
import stat
import sys
import time


def _import_pb2():
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("COORD_PB2_DIR"), os.path.join(here, "..", "..", "build", "proto")):
        if d and os.path.exists(os.path.join(d, "coord_pb2.py")) and d not in sys.path:
            sys.path.insert(0, d)
    import coord_pb2
    return coord_pb2


pb = _import_pb2()
import zmq  # noqa: E402  (after the path set-up, so both import errors read alike)
import zmq.utils.z85  # noqa: E402

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7701"
ACCEPTED = pb.ACK_STATUS_ACCEPTED
DUPLICATE = pb.ACK_STATUS_DUPLICATE
REJECTED = pb.ACK_STATUS_REJECTED
RETRY_LATER = pb.ACK_STATUS_RETRY_LATER
FINAL = (ACCEPTED, DUPLICATE, REJECTED)

CATEGORIES = {"event": pb.Event, "letter": pb.OutreachLetter, "statement": pb.Statement,
              "petition": pb.Petition, "media": pb.MediaReport, "retraction": pb.Retraction}


def status_name(status):
    """"ACCEPTED", "DUPLICATE", "REJECTED", "RETRY_LATER" (or "status N")."""
    try:
        return pb.AckStatus.Name(status)[len("ACK_STATUS_"):]
    except ValueError:
        return f"status {status}"


def reason_name(reason):
    """"INVALID_COUNTRY", ... ("NONE" for 0)."""
    try:
        return pb.Reason.Name(reason)[len("REASON_"):]
    except ValueError:
        return f"reason {reason}"


def key(env):
    """The key acks are matched by: (msg_id, revision)."""
    return (env.msg_id, env.revision)


def parse_time(value):
    """Unix ms from an int (ms), a datetime/date, or ISO 8601 text ("2020-10-04" is 00:00
    UTC; "2020-10-04T18:30:00Z", "2020-10-04T18:30+02:00"; no zone means UTC)."""
    if isinstance(value, bool):
        raise TypeError("a time, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        d = value
    elif isinstance(value, datetime.date):
        d = datetime.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        try:
            if len(text) == 10:
                d = datetime.datetime.strptime(text, "%Y-%m-%d")
            else:
                iso = text.replace("Z", "+00:00").replace("z", "+00:00")
                d = datetime.datetime.fromisoformat(iso)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date or date-time: {value!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return int(d.timestamp() * 1000)


def _enum_value(enum, text):
    if isinstance(text, int):
        return text
    name = str(text).strip().upper().replace("-", "_").replace(" ", "_")
    if name.isdigit():
        return int(name)
    zero = enum.Name(0)
    prefix = zero[:-len("UNSPECIFIED")] if zero.endswith("UNSPECIFIED") else ""
    for candidate in (name, prefix + name):
        try:
            value = enum.Value(candidate)
        except ValueError:
            continue
        if value != 0:
            return value
    choices = ", ".join(n[len(prefix):].lower() for n in enum.keys()
                        if not n.endswith("UNSPECIFIED"))
    raise ValueError(f"{text!r} is not one of: {choices}")


class _EnumView:
    """Name()/Value()/keys() over an EnumDescriptor, like the generated enum wrappers."""

    def __init__(self, desc):
        self.desc = desc

    def Name(self, number):
        return self.desc.values_by_number[number].name

    def Value(self, name):
        try:
            return self.desc.values_by_name[name].number
        except KeyError:
            raise ValueError(name) from None

    def keys(self):
        return [v.name for v in self.desc.values]


def _set_body(body, fields):
    desc = body.DESCRIPTOR
    for name, value in fields.items():
        if value is None or value == "":
            continue
        f = desc.fields_by_name.get(name) or desc.fields_by_name.get(name + "s")
        if f is None:
            raise ValueError(f"{name!r} is not a field of {desc.name}")
        if f.label == f.LABEL_REPEATED:
            items = value.replace(",", ";").split(";") if isinstance(value, str) else value
            getattr(body, f.name).extend(s.strip() for s in items if s.strip())
        elif f.enum_type is not None:
            setattr(body, f.name, _enum_value(_EnumView(f.enum_type), value))
        elif f.type == f.TYPE_INT64:
            setattr(body, f.name, parse_time(value))
        elif f.type in (f.TYPE_UINT32, f.TYPE_UINT64):
            setattr(body, f.name, int(value))
        else:
            setattr(body, f.name, str(value).strip())


def derive_msg_id(env):
    """The content-derived msg_id libcoord and coord-push use: "h-" and the first 16 bytes
    of SHA-256 over "coord-msg-id-v1", NUL, council, NUL, category, NUL, and the body as
    serialized (fields in number order, defaults left out)."""
    category = env.WhichOneof("body")
    if category is None:
        raise ValueError("the envelope has no body")
    body = getattr(env, category).SerializeToString(deterministic=True)
    h = hashlib.sha256(b"coord-msg-id-v1\0" + env.council.encode() + b"\0" +
                       category.encode() + b"\0" + body)
    return "h-" + h.digest()[:16].hex()


def record(council, category, *, msg_id=None, revision=None, created_at=None, **fields):
    """A coord.v1.Envelope from friendly values: enums by name ("rally", "head of state"),
    dates as ISO 8601 text, date/datetime or ms, languages as a list or "fr;hy".
    Defaults: revision 1 (2 for a retraction), created_at now, msg_id derived from the
    content (a retraction must name its record)."""
    if category not in CATEGORIES:
        raise ValueError(f"{category!r} is not one of {', '.join(CATEGORIES)}")
    env = pb.Envelope(council=council)
    body = getattr(env, category)
    body.SetInParent()
    _set_body(body, fields)
    env.revision = revision if revision is not None else (2 if category == "retraction" else 1)
    env.created_at = parse_time(created_at) if created_at is not None else int(time.time() * 1000)
    if msg_id:
        env.msg_id = msg_id
    elif category == "retraction":
        raise ValueError("a retraction needs the msg_id of the record it withdraws")
    else:
        env.msg_id = derive_msg_id(env)
    return env


class Timeout(Exception):
    """flush() ran out of time with records unanswered (or a Query got no answer)."""


class KeyFileError(ValueError):
    """A key argument or key file that is not what it must be; the message says why."""


KEY_Z85_LEN = 40


def _is_z85_key(text):
    if len(text) != KEY_Z85_LEN:
        return False
    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except (ValueError, KeyError, IndexError):
        return False


def read_key_file(path, secret=False):
    """The Z85 key (str) of a key file written by `coordctl keygen`: '#' comment lines and
    exactly one line with the 40-character key. A secret file must be a regular file that
    neither group nor others may access (else PermissionError saying to chmod 600 it)."""
    what = "secret" if secret else "public"
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} key file {path!r} is not a regular file")
        if secret and st.st_mode & 0o077:
            raise PermissionError(
                f"secret key file {path!r} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): run 'chmod 600 {path}', and make a new key "
                f"if others may have read it")
        data = f.read(4097)
    if len(data) > 4096:
        raise KeyFileError(f"{path!r} is larger than 4096 bytes: not a key file")
    key = None
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        text = line.decode("ascii", errors="replace")
        if not _is_z85_key(text):
            raise KeyFileError(f"{path!r} line {number}: expected a 40-character Z85 {what} "
                               f"key or a '#' comment")
        if key is not None:
            raise KeyFileError(f"{path!r} line {number}: a second key: keep one")
        key = text
    if key is None:
        raise KeyFileError(f"{path!r} holds no {what} key")
    return key


def load_keys(server_key, key_file):
    """(server_public, client_public, client_secret) as Z85 bytes, for the CURVE socket
    options. `server_key`: the broker's public key as 40 Z85 characters (str or bytes), or
    the path (str or path-like) of its .public file; `key_file`: this client's NAME.secret
    (the public key is derived from it). Raises KeyFileError, PermissionError or OSError."""
    if not server_key or not key_file:
        raise KeyFileError("CURVE needs both server_key (the broker's public key) and "
                           "key_file (your NAME.secret)")
    if isinstance(server_key, bytes):
        server_key = server_key.decode("ascii", errors="replace")
    server_key = os.fspath(server_key)
    key_file = os.fspath(key_file)
    if key_file.endswith(".public"):
        raise KeyFileError(f"{key_file!r} is a public key file: key_file is your NAME.secret")
    server = server_key if _is_z85_key(server_key) else read_key_file(server_key)
    secret = read_key_file(key_file, secret=True).encode()
    return server.encode(), zmq.curve_public(secret), secret


def _curve_keys(server_key, key_file, curve):
    """The (server, public, secret) triple from either form of the arguments, or None."""
    if server_key is not None or key_file is not None:
        if curve is not None:
            raise ValueError("give server_key and key_file, or curve, not both")
        return load_keys(server_key, key_file)
    return curve


def _apply_curve(sock, keys):
    if keys:
        server, public, secret = (k.encode() if isinstance(k, str) else k for k in keys)
        sock.curve_serverkey = server
        sock.curve_publickey = public
        sock.curve_secretkey = secret


class _Pending:
    __slots__ = ("data", "state", "deadline", "retries")

    def __init__(self, data):
        self.data = data
        self.state = "queued"  # queued -> sent -> (backoff -> queued)...
        self.deadline = 0.0
        self.retries = 0


class Client:
    """One council's pipelined pushing client (not thread-safe: one per thread).

    `results` maps each pushed key (msg_id, revision) to its final pb.Ack. `on_ack(ack)`
    is called for every final Ack and every RETRY_LATER.
    """

    def __init__(self, endpoint=DEFAULT_ENDPOINT, council=None, *, max_in_flight=256,
                 ack_timeout=10.0, backoff_min=0.1, backoff_max=30.0, on_ack=None, ctx=None,
                 server_key=None, key_file=None, curve=None):
        """server_key, key_file: CURVE (see load_keys()); the council's key must be in the
        broker's keys file under [council.<id>]. A wrong or unknown key is never an error
        here: the broker refuses the handshake, nothing is answered, flush() raises Timeout.
        curve: the keys as (server_public, client_public, client_secret) Z85 instead."""
        self.endpoint = endpoint
        self.council = council
        self.max_in_flight = max_in_flight
        self.ack_timeout = ack_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_ack = on_ack
        self.curve = _curve_keys(server_key, key_file, curve)
        self.ctx = ctx or zmq.Context.instance()
        self.results = {}
        self.reconnects = 0
        self._pending = {}  # key -> _Pending, in push order
        self._busy_ids = collections.Counter()  # msg_id -> keys of it sent or in backoff
        self.sock = None
        self._open()

    # socket ---------------------------------------------------------------------------
    def _open(self):
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, self.max_in_flight + 16)
        s.setsockopt(zmq.RCVHWM, 4 * self.max_in_flight + 1000)
        s.setsockopt(zmq.RECONNECT_IVL, int(self.backoff_min * 1000))
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.backoff_max * 1000))
        s.setsockopt(zmq.MAXMSGSIZE, 4096)
        _apply_curve(s, self.curve)
        s.connect(self.endpoint)
        self.sock = s

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # pushing --------------------------------------------------------------------------
    @property
    def waiting(self):
        """Records pushed and not yet answered finally."""
        return len(self._pending)

    def push(self, env, timeout=None):
        """Queue one Envelope (pb.Envelope, or its bytes with `env` then being (key, bytes)).
        Sends at once when the window has room; otherwise first processes acks until it
        has (at most `timeout` seconds; None: ack_timeout). Returns the record's key."""
        if isinstance(env, pb.Envelope):
            if self.council is not None and env.council != self.council:
                raise ValueError(f"envelope of council {env.council!r}, client of {self.council!r}")
            k, data = key(env), env.SerializeToString()
        else:
            k, data = env
        if k in self._pending:
            return k
        self.results.pop(k, None)
        self._pending[k] = _Pending(data)
        deadline = time.monotonic() + (self.ack_timeout if timeout is None else timeout)
        while self._in_flight() >= self.max_in_flight:
            if not self.poll(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                break
        self._send_ready()
        return k

    def push_many(self, envs):
        return [self.push(e) for e in envs]

    def _in_flight(self):
        return sum(1 for p in self._pending.values() if p.state == "sent")

    def _send_ready(self):
        now = time.monotonic()
        room = self.max_in_flight - self._in_flight()
        for k, p in self._pending.items():
            if room <= 0:
                break
            if p.state == "backoff" and p.deadline <= now:
                p.state = "queued"
                self._busy_ids[k[0]] -= 1
            if p.state != "queued":
                continue
            if self._busy_ids[k[0]] > 0:
                continue  # another revision of this record is on its way: keep the order
            try:
                self.sock.send(p.data, zmq.NOBLOCK)
            except zmq.Again:
                break  # not connected yet, or the pipe is full
            p.state = "sent"
            p.deadline = now + self.ack_timeout
            self._busy_ids[k[0]] += 1
            room -= 1

    # answers --------------------------------------------------------------------------
    def poll(self, timeout=0.0):
        """Process the acks that arrive within `timeout` seconds (and resend what is due).
        Returns the final Acks processed."""
        final = []
        self._send_ready()
        wait = timeout
        nxt = self._next_deadline()
        if nxt is not None:
            wait = max(0.0, min(wait, nxt - time.monotonic()))
        if self.sock.poll(int(wait * 1000), zmq.POLLIN):
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 1:
                    continue
                try:
                    ack = pb.Ack.FromString(frames[0])
                except Exception:  # noqa: BLE001 - a broken frame is not an answer
                    continue
                if self._take(ack):
                    final.append(ack)
        self._expire()
        self._send_ready()
        return final

    def _take(self, ack):
        k = (ack.msg_id, ack.revision)
        p = self._pending.get(k)
        if p is None:
            return False  # a late answer to a record already settled
        if p.state in ("sent", "backoff"):
            self._busy_ids[k[0]] -= 1
        if ack.status in FINAL:
            del self._pending[k]
            self.results[k] = ack
            if self.on_ack:
                self.on_ack(ack)
            return True
        p.retries += 1
        delay = min(self.backoff_max, self.backoff_min * 2 ** (p.retries - 1))
        p.state = "backoff"
        p.deadline = time.monotonic() + delay * random.uniform(0.75, 1.0)
        self._busy_ids[k[0]] += 1
        if self.on_ack:
            self.on_ack(ack)
        return False

    def _next_deadline(self):
        ds = [p.deadline for p in self._pending.values() if p.state in ("sent", "backoff")]
        return min(ds) if ds else None

    def _expire(self):
        now = time.monotonic()
        if any(p.state == "sent" and p.deadline <= now for p in self._pending.values()):
            # No answer in time: the connection may be broken; start a fresh one and
            # resend everything unanswered.
            self.close()
            self._open()
            self.reconnects += 1
            for k, p in self._pending.items():
                if p.state == "sent":
                    p.state = "queued"
                    self._busy_ids[k[0]] -= 1

    def flush(self, timeout=None):
        """Wait until every pushed record is answered finally; raises Timeout after
        `timeout` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"{len(self._pending)} records unanswered after {timeout} s")
            self.poll(min(left, 1.0))
        return self.results


class QueryError(Exception):
    """The broker answered a query with an error (its message is the exception's)."""


DEFAULT_QUERY_ENDPOINT = "tcp://127.0.0.1:7703"


class Query:
    """Headquarters' questions on the query socket (what coordctl asks): one QueryRequest
    frame on a DEALER, answers matched by request_id. With CURVE, `server_key`/`key_file`
    as for Client: a subscriber key may ask for digests, history and status, an admin key
    also for stats (and export)."""

    def __init__(self, endpoint=DEFAULT_QUERY_ENDPOINT, *, timeout=5.0, ctx=None,
                 server_key=None, key_file=None, curve=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self._next_id = (int(time.time()) << 20) ^ (os.getpid() << 4)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        _apply_curve(self.sock, _curve_keys(server_key, key_file, curve))
        self.sock.connect(endpoint)

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ask(self, request):
        """Send a pb.QueryRequest (its request_id is set here); return the pb.QueryResponse.
        Raises QueryError for an error answer, Timeout when none comes within `timeout` s
        (the broker is down, or it refused this client's key)."""
        self._next_id += 1
        request.request_id = self._next_id
        self.sock.send(request.SerializeToString())
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise Timeout(f"no answer from {self.endpoint} within {self.timeout} s")
            frames = self.sock.recv_multipart()
            if len(frames) != 1:
                continue
            try:
                resp = pb.QueryResponse.FromString(frames[0])
            except Exception:  # noqa: BLE001 - a broken frame is not an answer
                continue
            if resp.request_id != request.request_id:
                continue  # a late answer to an earlier request
            if resp.WhichOneof("body") == "error":
                raise QueryError(resp.error.message)
            return resp

    def digest(self, window=pb.WINDOW_ALL, council=None, country=None, headlines=0):
        """The pb.Digest of the whole campaign, one council or one country."""
        req = pb.QueryRequest()
        req.digest.window = window
        req.digest.headlines = headlines
        if council is not None:
            req.digest.scope.kind, req.digest.scope.id = pb.SCOPE_KIND_COUNCIL, council
        elif country is not None:
            req.digest.scope.kind, req.digest.scope.id = pb.SCOPE_KIND_COUNTRY, country
        else:
            req.digest.scope.kind = pb.SCOPE_KIND_ALL
        return self.ask(req).digest

    def stats(self):
        """The broker's pb.Stats (an admin's question when CURVE is on)."""
        req = pb.QueryRequest()
        req.stats.SetInParent()
        return self.ask(req).stats


def watch_digests(endpoint, topic="digest/all/", ctx=None, *, server_key=None, key_file=None,
                  curve=None):
    """Yield (topic, pb.Publication) from the broker's publish socket, forever. Topics:
    "digest/all/", "digest/council/<id>/", "digest/country/<CC>/", "item/<council>/".
    server_key, key_file: CURVE, a subscriber (or admin) key, as for Client."""
    ctx = ctx or zmq.Context.instance()
    keys = _curve_keys(server_key, key_file, curve)
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    _apply_curve(s, keys)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, topic.encode())
    try:
        while True:
            frames = s.recv_multipart()
            if len(frames) == 2:
                yield frames[0].decode(errors="replace"), pb.Publication.FromString(frames[1])
    finally:
        s.close(linger=0)
