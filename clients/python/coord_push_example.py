"""Send one record to coordd and print the broker's answer (an example of coordclient).

    /usr/bin/python3 clients/python/coord_push_example.py --council fr \
        event --kind rally --country FR --city Paris --date 2020-10-04 --title "Rally"

The category (event, letter, statement, petition, media, or retract MSG_ID) is followed by
its fields as --name value pairs, named as in proto/coord.proto (--recipient-kind or
--recipient_kind; see `coord-push event --help` for the lists). The msg_id is derived from
the content, exactly as coord-push derives it, unless --msg-id is given: run the same
command twice and the second answer is DUPLICATE with the same seq.

It uses the bindings that the build generates from proto/coord.proto (build/proto/
coord_pb2.py; set COORD_PB2_DIR to use another directory) and Debian's python3-zmq.

Exit status: 0 for ACCEPTED or DUPLICATE, 1 for REJECTED, 2 for usage errors, 3 when the
broker did not answer in time (or refused the key: with CURVE, --server-key/$COORD_SERVER_KEY
and --key/$COORD_KEY).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import coordclient
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"coord_push_example: {e} (build first with scripts/run or meson, and use "
             f"/usr/bin/python3)")


def main():
    p = argparse.ArgumentParser(description="Send one activity record to coordd.",
                                epilog="Fields follow the category as --name value pairs.")
    p.add_argument("--endpoint", default=coordclient.DEFAULT_ENDPOINT,
                   help="broker ingest endpoint")
    p.add_argument("--council", required=True, help="your council id")
    p.add_argument("--msg-id", help="idempotency key (default: derived from the record)")
    p.add_argument("--revision", type=int, help="default 1 (2 for retract)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack")
    p.add_argument("--server-key", default=os.environ.get("COORD_SERVER_KEY") or None,
                   help="CURVE: the broker's public key, Z85 or its .public file")
    p.add_argument("--key", default=os.environ.get("COORD_KEY") or None,
                   help="CURVE: your council's NAME.secret")
    p.add_argument("category", choices=["event", "letter", "statement", "petition", "media",
                                        "retract"])
    p.add_argument("target", nargs="?", help="retract: the msg_id of the record")
    args, rest = p.parse_known_args()

    fields = {}
    while rest:
        name = rest.pop(0)
        if not name.startswith("--") or not rest:
            p.error(f"expected --name value pairs, got {name!r}")
        value = rest.pop(0)
        name = name[2:].replace("-", "_")
        if isinstance(fields.get(name), list):
            fields[name].append(value)
        elif name in fields:
            fields[name] = [fields[name], value]
        else:
            fields[name] = value

    category = "retraction" if args.category == "retract" else args.category
    msg_id = args.target if category == "retraction" else args.msg_id
    try:
        env = coordclient.record(args.council, category, msg_id=msg_id, revision=args.revision,
                                 **fields)
    except ValueError as e:
        p.error(str(e))

    if (args.server_key is None) != (args.key is None):
        p.error("give both --server-key and --key, or neither")
    try:
        client = coordclient.Client(args.endpoint, args.council, server_key=args.server_key,
                                    key_file=args.key)
    except (OSError, ValueError) as e:
        p.error(str(e))
    with client:
        client.push(env)
        try:
            client.flush(timeout=args.timeout)
        except coordclient.Timeout:
            print(f"no answer from {args.endpoint} within {args.timeout} s", file=sys.stderr)
            return 3
        ack = client.results[coordclient.key(env)]
    status = coordclient.status_name(ack.status)
    line = f"{status} msg_id={ack.msg_id} revision={ack.revision}"
    if ack.seq:
        line += f" seq={ack.seq}"
    if ack.reason:
        line += f" reason={coordclient.reason_name(ack.reason)}: {ack.message}"
    print(line)
    return 0 if ack.status in (coordclient.ACCEPTED, coordclient.DUPLICATE) else 1


if __name__ == "__main__":
    sys.exit(main())
