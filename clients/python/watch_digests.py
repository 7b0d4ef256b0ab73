"""Watch coordd's live digests and print each as it arrives (an example of coordclient).

    /usr/bin/python3 clients/python/watch_digests.py [--endpoint tcp://127.0.0.1:7702] \
        [--topic digest/all/] [--count N]

Topics: digest/all/, digest/council/<id>/, digest/country/<CC>/ (see docs/PROTOCOL.md).
Each publication carries the digests of one scope for the whole campaign, the last 24 hours
and the last hour; this prints one line per digest line (category, kind, count, countries,
languages, councils). The live feed may skip messages under load (prev_seq shows a gap);
the query socket has the exact digest (coordctl digest).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import coordclient  # noqa: E402

pb = coordclient.pb


def describe(line):
    cat = pb.Category.Name(line.category)[len("CATEGORY_"):].lower()
    return (f"{cat}/{line.kind}: {line.count} records, sum {line.sum}, "
            f"{len(line.countries)} countries, {len(line.languages)} languages, "
            f"{len(line.councils)} councils")


def main():
    p = argparse.ArgumentParser(description="Print coordd's live digests.")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:7702", help="the publish socket")
    p.add_argument("--topic", default="digest/all/")
    p.add_argument("--count", type=int, default=0, help="stop after N publications")
    args = p.parse_args()
    seen = 0
    last = 0
    for topic, pub in coordclient.watch_digests(args.endpoint, args.topic):
        missed = seen > 0 and pub.prev_seq != last
        gap = " (gap: some publications were missed)" if missed else ""
        last = pub.last_seq
        print(f"{topic} seq {pub.first_seq}..{pub.last_seq}{gap}")
        if pub.WhichOneof("body") == "digests":
            for d in pub.digests.digests:
                window = pb.Window.Name(d.window)[len("WINDOW_"):].lower()
                for line in d.lines:
                    print(f"  [{window}] {describe(line)}")
        sys.stdout.flush()
        seen += 1
        if args.count and seen >= args.count:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
