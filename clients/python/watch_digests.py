"""Watch coordd's live digests and print each as it arrives (an example of coordclient).

    /usr/bin/python3 clients/python/watch_digests.py [--endpoint tcp://127.0.0.1:7702] \
        [--topic digest/all/] [--count N] [--server-key KEY --key NAME.secret]

Topics: digest/all/, digest/council/<id>/, digest/country/<CC>/ (see docs/PROTOCOL.md).
Each publication carries the digests of one scope for the whole campaign, the last 24 hours
and the last hour; this prints the total, then one line per digest line (category, kind,
count, distinct countries, languages and councils: published digests carry the distinct
counts, not the lists of codes). The live feed may skip messages under load (prev_seq shows a gap);
the query socket has the exact digest (coordctl digest). With a broker that requires CURVE,
--server-key (or $COORD_SERVER_KEY) and --key (or $COORD_KEY) give a subscriber key.
"""
import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import coordclient  # noqa: E402

pb = coordclient.pb


def describe(line):
    """One line's figures. Published digests carry the distinct counts, not the lists of
    codes (the query socket's digests have both)."""
    cat = pb.Category.Name(line.category)[len("CATEGORY_"):].lower()
    return (f"{cat}/{line.kind}: {line.count} records, sum {line.sum}, "
            f"{max(line.distinct_countries, len(line.countries))} countries, "
            f"{max(line.distinct_languages, len(line.languages))} languages, "
            f"{max(line.distinct_councils, len(line.councils))} councils")


def main():
    p = argparse.ArgumentParser(description="Print coordd's live digests.")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:7702", help="the publish socket")
    p.add_argument("--topic", default="digest/all/")
    p.add_argument("--count", type=int, default=0, help="stop after N publications")
    p.add_argument("--server-key", default=os.environ.get("COORD_SERVER_KEY") or None,
                   help="CURVE: the broker's public key, Z85 or its .public file")
    p.add_argument("--key", default=os.environ.get("COORD_KEY") or None,
                   help="CURVE: your NAME.secret (a subscriber key)")
    args = p.parse_args()
    if (args.server_key is None) != (args.key is None):
        p.error("give both --server-key and --key, or neither")
    try:
        feed = coordclient.watch_digests(args.endpoint, args.topic, server_key=args.server_key,
                                         key_file=args.key)
        first = next(feed)
    except (OSError, ValueError) as e:
        p.error(str(e))
    seen = 0
    last = 0
    for topic, pub in itertools.chain([first], feed):
        missed = seen > 0 and pub.prev_seq != last
        gap = " (gap: some publications were missed)" if missed else ""
        last = pub.last_seq
        print(f"{topic} seq {pub.first_seq}..{pub.last_seq}{gap}")
        if pub.WhichOneof("body") == "digests":
            for d in pub.digests.digests:
                window = pb.Window.Name(d.window)[len("WINDOW_"):].lower()
                if d.HasField("total"):
                    t = d.total
                    print(f"  [{window}] all: {t.count} records from {t.distinct_councils} "
                          f"councils in {t.distinct_countries} countries")
                for line in d.lines:
                    print(f"  [{window}] {describe(line)}")
        sys.stdout.flush()
        seen += 1
        if args.count and seen >= args.count:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
