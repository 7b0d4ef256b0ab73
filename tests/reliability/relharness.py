"""relharness: what the reliability tests, the worker processes, the checker and the soak
command share (docs/RELIABILITY.md).

- Paths and imports: tests/integration (coordlib) and clients/python (coordclient) on
  sys.path, the generated coord_pb2 found through $COORD_PB2_DIR or build/proto.
- ClientLog: the append-only log of one client process. Each line is written with one
  write(2) on an O_APPEND descriptor before the client counts the event, so a kill -9 of
  the client never loses a line it acted on:
      G <generation>                                   a (re)start of the client
      S <council> <msg_id> <revision> <base64 bytes>   about to send these Envelope bytes
      A <council> <msg_id> <revision> <STATUS> <seq>   a final answer (ACCEPTED, DUPLICATE,
                                                       REJECTED) arrived
  A record is "sent" once its S line is written (it may or may not reach the broker) and
  "acked" once an A line with ACCEPTED or DUPLICATE is written.
- Records: gen_records() builds a council's records (bodies, countries, languages,
  corrections, retractions, restores) with coordlib's campaign generator.
- scale(): the size factor the tests use ($COORD_REL_SCALE; the ASan build sets 0.5);
  slowdown(): the factor for ack timeouts ($COORD_SANITIZED).
"""

import base64
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _setup_paths():
    pb2_dir = os.environ.get("COORD_PB2_DIR") or str(REPO / "build" / "proto")
    os.environ.setdefault("COORD_PB2_DIR", pb2_dir)
    for d in (pb2_dir, str(REPO / "tests" / "integration"), str(REPO / "clients" / "python")):
        if d not in sys.path:
            sys.path.insert(0, d)


_setup_paths()

import coord_pb2 as pb  # noqa: E402
import coordlib  # noqa: E402

FINAL_NAMES = {pb.ACK_STATUS_ACCEPTED: "ACCEPTED", pb.ACK_STATUS_DUPLICATE: "DUPLICATE",
               pb.ACK_STATUS_REJECTED: "REJECTED"}
# ACKED: acknowledged with no per-record seq known (coord-push import exited 0).
ACKED = ("ACCEPTED", "DUPLICATE", "ACKED")


def scale():
    """The size factor for scenario sizes: $COORD_REL_SCALE (default 1)."""
    try:
        return max(0.05, float(os.environ.get("COORD_REL_SCALE", "1")))
    except ValueError:
        return 1.0


def slowdown():
    """How much slower the broker runs here: 2 under the sanitizers
    ($COORD_SANITIZED=1), else 1. Ack timeouts are multiplied by it, so that a slow
    broker does not make the clients resend everything they have in flight."""
    return 2.0 if os.environ.get("COORD_SANITIZED") == "1" else 1.0


def scaled(n, minimum=1):
    return max(minimum, int(n * scale()))


def build_path(var, rel):
    """A built program: $var, else build/<rel>."""
    return os.environ.get(var) or str(REPO / "build" / rel)


# ---------------------------------------------------------------------------------------
# The client log

class ClientLog:
    """One client's append-only log (see the module comment). Not thread-safe."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _line(self, text):
        data = (text + "\n").encode()
        n = os.write(self.fd, data)
        if n != len(data):
            raise OSError(f"short write to {self.path}: {n} of {len(data)} bytes")

    def generation(self, n):
        self._line(f"G {n}")

    def sent(self, council, msg_id, revision, data):
        self._line(f"S {council} {msg_id} {revision} {base64.b64encode(data).decode()}")

    def acked(self, council, msg_id, revision, status, seq):
        self._line(f"A {council} {msg_id} {revision} {status} {seq}")


class LogContents:
    """What one or more client logs say, read back.

    sent:  {(council, msg_id, revision): set of bytes sent under that key}
    final: {(council, msg_id, revision): [(status, seq), ...]} (every final answer logged)
    order: [(council, msg_id, revision)] in first-sent order (for resending)
    generations: the number of G lines."""

    def __init__(self):
        self.sent = {}
        self.final = {}
        self.order = []
        self.generations = 0
        self.bad_lines = 0

    def read(self, path):
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        # A kill -9 can only cut the last line short; it then counts as never written.
        if lines and lines[-1] != b"":
            lines = lines[:-1]
        for raw in lines:
            if not raw:
                continue
            parts = raw.decode().split(" ")
            try:
                if parts[0] == "G" and len(parts) == 2:
                    self.generations += 1
                elif parts[0] == "S" and len(parts) == 5:
                    key = (parts[1], parts[2], int(parts[3]))
                    if key not in self.sent:
                        self.sent[key] = set()
                        self.order.append(key)
                    self.sent[key].add(base64.b64decode(parts[4], validate=True))
                elif parts[0] == "A" and len(parts) == 6:
                    key = (parts[1], parts[2], int(parts[3]))
                    self.final.setdefault(key, []).append((parts[4], int(parts[5])))
                else:
                    self.bad_lines += 1
            except ValueError:
                self.bad_lines += 1
        return self

    def acked(self):
        """{key: [(status, seq)]} of the keys with at least one ACCEPTED/DUPLICATE answer."""
        return {k: [a for a in v if a[0] in ACKED] for k, v in self.final.items()
                if any(a[0] in ACKED for a in v)}

    def unanswered(self):
        """Keys sent and never answered finally, in first-sent order."""
        return [k for k in self.order if k not in self.final]


def read_logs(paths):
    out = LogContents()
    for p in paths:
        out.read(p)
    return out


# ---------------------------------------------------------------------------------------
# Records

class RecordGen:
    """A council's stream of records: each call to next_record() returns the Envelopes of
    one record in revision order (usually one; a correction, a retraction, or a retraction
    and a restore add revisions). msg_ids are "<prefix>-<n>"; the prefix must be unique per
    client and generation."""

    def __init__(self, council, prefix, seed):
        self.council = council
        self.prefix = prefix
        self.n = 0
        # Campaign's generator gives realistic bodies; it holds no records itself here.
        self.camp = coordlib.Campaign(n_records=0, seed=seed, councils=[council])
        self.rng = random.Random(seed ^ 0x5EED)

    def next_record(self):
        msg_id = f"{self.prefix}-{self.n}"
        self.n += 1
        revs = [self.camp._envelope(self.council, msg_id, 1)]
        roll = self.rng.random()
        if roll < 0.10:
            revs.append(self.camp._envelope(self.council, msg_id, 2))
        elif roll < 0.16:
            revs.append(coordlib.gen_envelope("retraction", council=self.council,
                                              msg_id=msg_id, revision=2))
        elif roll < 0.18:
            revs.append(coordlib.gen_envelope("retraction", council=self.council,
                                              msg_id=msg_id, revision=2))
            revs.append(self.camp._envelope(self.council, msg_id, 3))
        return revs


def envelope_key(env):
    return (env.council, env.msg_id, env.revision)
