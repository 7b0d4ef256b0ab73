"""Send one record to coordd and print the broker's answer.

An example of a council client in Python: one DEALER socket, one Envelope frame out, one
Ack frame back. It uses the bindings that the build generates from proto/coord.proto
(build/proto/coord_pb2.py; set COORD_PB2_DIR to use another directory).

    /usr/bin/python3 clients/python/coord_push_example.py --council fr \
        event --kind RALLY --country FR --city Paris --date 2020-10-04 --title "Rally"

Exit status: 0 for ACCEPTED or DUPLICATE, 1 for REJECTED or RETRY_LATER, 2 for usage
errors, 3 when the broker did not answer in time.
"""
import argparse
import datetime
import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("COORD_PB2_DIR", os.path.join(HERE, "..", "..", "build", "proto")))

try:
    import zmq
    import coord_pb2 as pb
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"coord_push_example: {e} (build first with scripts/run or meson, and use /usr/bin/python3)")


def date_ms(text):
    """ISO 8601 date or date-time to Unix milliseconds (a date alone is 00:00 UTC)."""
    try:
        if len(text) == 10:
            d = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
        else:
            d = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if d.tzinfo is None:
                d = d.replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date: {text!r}")
    return int(d.timestamp() * 1000)


def enum_value(enum, prefix):
    def parse(text):
        name = prefix + text.upper().replace("-", "_")
        try:
            return enum.Value(name)
        except ValueError:
            names = [n[len(prefix):] for n in enum.keys() if not n.endswith("UNSPECIFIED")]
            raise argparse.ArgumentTypeError(f"unknown kind {text!r}; one of {', '.join(names)}")
    return parse


def build_parser():
    p = argparse.ArgumentParser(description="Send one activity record to coordd.")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:7701", help="broker ingest endpoint")
    p.add_argument("--council", required=True, help="your council id")
    p.add_argument("--msg-id", help="idempotency key (default: a hash of the record)")
    p.add_argument("--revision", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack")
    sub = p.add_subparsers(dest="category", required=True)

    e = sub.add_parser("event", help="an event: rally, press conference, ...")
    e.add_argument("--kind", required=True, type=enum_value(pb.EventKind, "EVENT_KIND_"))
    e.add_argument("--country", required=True)
    e.add_argument("--city", default="")
    e.add_argument("--date", required=True, type=date_ms)
    e.add_argument("--title", required=True)
    e.add_argument("--organiser", default="")
    e.add_argument("--participants", type=int, default=0)
    e.add_argument("--language", action="append", default=[])

    r = sub.add_parser("retract", help="withdraw a record you sent")
    r.add_argument("target_msg_id")
    r.add_argument("--reason", default="")
    return p


def build_envelope(args):
    env = pb.Envelope(council=args.council, revision=args.revision,
                      created_at=int(time.time() * 1000))
    if args.category == "event":
        env.event.CopyFrom(pb.Event(kind=args.kind, country=args.country, city=args.city,
                                    date=args.date, title=args.title, organiser=args.organiser,
                                    participants=args.participants, languages=args.language))
    else:
        env.retraction.reason = args.reason
        env.msg_id = args.target_msg_id
    if not env.msg_id:
        body = env.WhichOneof("body") + repr(getattr(env, env.WhichOneof("body")))
        env.msg_id = args.msg_id or hashlib.sha256(body.encode()).hexdigest()[:32]
    return env


def main():
    args = build_parser().parse_args()
    env = build_envelope(args)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    sock.send(env.SerializeToString())
    if not sock.poll(int(args.timeout * 1000)):
        print(f"no answer from {args.endpoint} within {args.timeout} s", file=sys.stderr)
        return 3
    ack = pb.Ack.FromString(sock.recv())
    status = pb.AckStatus.Name(ack.status).replace("ACK_STATUS_", "")
    line = f"{status} msg_id={ack.msg_id} revision={ack.revision}"
    if ack.seq:
        line += f" seq={ack.seq}"
    if ack.reason:
        line += f" reason={pb.Reason.Name(ack.reason)}: {ack.message}"
    print(line)
    return 0 if status in ("ACCEPTED", "DUPLICATE") else 1


if __name__ == "__main__":
    sys.exit(main())
