"""checker: proves what the broker stored against what the clients logged
(docs/RELIABILITY.md).

Reads the whole store back through the query socket's history (the stored Items, byte for
byte) and the client logs (relharness.ClientLog), and counts:

  lost        acked records (an ACCEPTED or DUPLICATE answer was logged) not stored
  duplicated  extra stored copies of one (council, msg_id, revision)
  altered     stored records whose bytes differ from every version the client sent
  phantom     stored records that no client logged as sent
  misacked    ACCEPTED answers whose seq is not the stored item's seq, or DUPLICATE answers
              whose seq is below it or belongs to another record
  gaps        seqs missing from 1..last_seq (seqs are gap-free by design)
  digests     query digests (WINDOW_ALL; scope all, each council, each country seen) that
              differ from a recount of the live records among the stored items

All must be 0 (digests: all equal). Usage as a program:

  /usr/bin/python3 tests/reliability/checker.py --query ipc:///.../query.sock LOG...
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relharness  # noqa: E402,F401  (sets up the import paths)
from relharness import read_logs  # noqa: E402

import coord_pb2 as pb  # noqa: E402
import coordlib  # noqa: E402


class Report(dict):
    """The figures as a dict, with ok() and line()."""

    PROBLEMS = ("lost", "duplicated", "altered", "phantom", "misacked", "gaps",
                "digests_differ", "bad_log_lines")

    def ok(self):
        return all(self[k] == 0 for k in self.PROBLEMS)

    def line(self):
        return (f"checker: {self['items']} items stored (last seq {self['last_seq']}), "
                f"{self['sent']} sent, {self['acked']} acked, {self['in_doubt']} in doubt "
                f"({self['in_doubt_stored']} stored); lost {self['lost']}, duplicated "
                f"{self['duplicated']}, altered {self['altered']}, phantom {self['phantom']}, "
                f"misacked {self['misacked']}, gaps {self['gaps']}; digests "
                f"{self['digests_equal']}/{self['digests']} equal to the recount")

    def details(self):
        return "\n".join(self.get("examples", []))


def read_history(query, page_limit=5000):
    """Every stored Item, page by page, in seq order; and the last page's last_seq."""
    items = []
    after = 0
    last_seq = 0
    for _ in range(1_000_000):
        page = query.history(after, page_limit)
        items.extend(page.items)
        last_seq = page.last_seq
        if page.complete:
            return items, last_seq
        assert page.next_after_seq > after, "a history page made no progress"
        after = page.next_after_seq
    raise AssertionError("history did not complete")


def recount_all(live):
    """coordlib.recount() for scope all, every council and every country at once (one pass
    over the live records): {(scope kind, id): lines}."""
    out = {}
    for (council, _msg_id), env in live.items():
        cat, kind, _date, country, total, langs = coordlib.contribution(env)
        for scope in ((pb.SCOPE_KIND_ALL, ""), (pb.SCOPE_KIND_COUNCIL, council),
                      (pb.SCOPE_KIND_COUNTRY, country)):
            line = out.setdefault(scope, {}).setdefault((cat, kind), [0, 0, {}, {}, {}])
            line[0] += 1
            line[1] += total
            line[2][country] = line[2].get(country, 0) + 1
            for lang in langs:
                line[3][lang] = line[3].get(lang, 0) + 1
            line[4][council] = line[4].get(council, 0) + 1
    return {scope: {k: tuple(v) for k, v in lines.items()} for scope, lines in out.items()}


def check(query, log_paths, extra_countries=()):
    """Run every check against the broker behind `query` (a coordlib.Query); returns a
    Report. Nothing may write to the broker meanwhile."""
    logs = read_logs(log_paths)
    items, last_seq = read_history(query)
    stats = query.stats()
    rep = Report(examples=[])

    def example(kind, text):
        if len(rep["examples"]) < 20:
            rep["examples"].append(f"{kind}: {text}")

    # Stored items by key.
    stored = {}  # key -> [(seq, envelope bytes)]
    envs = []
    seqs = []
    for it in items:
        env = pb.Envelope.FromString(it.envelope)
        key = (env.council, env.msg_id, env.revision)
        stored.setdefault(key, []).append((it.seq, bytes(it.envelope)))
        if it.council != env.council:
            example("altered", f"item {it.seq} filed under {it.council!r}, sent by "
                    f"{env.council!r}")
        envs.append(env)
        seqs.append(it.seq)
    rep["items"] = len(items)
    rep["last_seq"] = last_seq
    want = list(range(1, last_seq + 1))
    rep["gaps"] = len(set(want) - set(seqs)) + (0 if seqs == sorted(set(seqs)) else 1)
    if stats.last_seq != last_seq or stats.items != len(items):
        rep["gaps"] += 1
        example("gaps", f"stats say last_seq {stats.last_seq}, items {stats.items}; history "
                f"gave {len(items)} items up to {last_seq}")
    rep["duplicated"] = sum(len(v) - 1 for v in stored.values())
    for k, v in stored.items():
        if len(v) > 1:
            example("duplicated", f"{k} stored at seqs {[s for s, _ in v]}")

    # Every acked record stored once with the bytes sent; answers' seqs right.
    acked = logs.acked()
    latest_seq = {}
    for (council, msg_id, _rev), v in stored.items():
        latest_seq[(council, msg_id)] = max(latest_seq.get((council, msg_id), 0),
                                            max(s for s, _ in v))
    lost = altered = misacked = 0
    for key, answers in acked.items():
        if key not in stored:
            # DUPLICATE means "this revision or a later one is stored".
            later = any(s == "DUPLICATE" for s, _ in answers) and any(
                (key[0], key[1], r) in stored for r in range(key[2] + 1, key[2] + 64))
            if not later:
                lost += 1
                example("lost", f"{key} answered {answers}, not stored")
            continue
        seq, data = stored[key][0]
        for status, aseq in answers:
            if status == "ACCEPTED" and aseq != seq:
                misacked += 1
                example("misacked", f"{key} ACCEPTED with seq {aseq}, stored at {seq}")
            elif status == "DUPLICATE" and (aseq < seq or
                                            aseq > latest_seq[(key[0], key[1])]):
                misacked += 1
                example("misacked", f"{key} DUPLICATE with seq {aseq}, stored at {seq}")
    # Every stored record sent by a client, with those bytes.
    phantom = 0
    for key, v in stored.items():
        sent = logs.sent.get(key)
        if sent is None:
            phantom += 1
            example("phantom", f"{key} stored at seq {v[0][0]}, never sent")
            continue
        for seq, data in v:
            if data not in sent:
                altered += 1
                example("altered", f"{key} at seq {seq}: stored bytes differ from the sent")
    rep.update(lost=lost, altered=altered, phantom=phantom, misacked=misacked)
    rep["sent"] = len(logs.sent)
    rep["acked"] = len(acked)
    rejected = {k: v for k, v in logs.final.items() if any(a[0] == "REJECTED" for a in v)}
    rep["rejected"] = len(rejected)
    doubt = [k for k in logs.sent if k not in logs.final]
    rep["in_doubt"] = len(doubt)
    rep["in_doubt_stored"] = sum(1 for k in doubt if k in stored)
    rep["bad_log_lines"] = logs.bad_lines

    # Digests against a recount of the stored records.
    live = coordlib.live_records(envs)
    councils = sorted({c for c, _m in live} | {e.council for e in envs})
    countries = set(extra_countries)
    for env in envs:
        if env.WhichOneof("body") != "retraction":
            countries.add(coordlib.contribution(env)[3])
    scopes = [(pb.SCOPE_KIND_ALL, "")]
    scopes += [(pb.SCOPE_KIND_COUNCIL, c) for c in councils]
    scopes += [(pb.SCOPE_KIND_COUNTRY, c) for c in sorted(countries)]
    recounted = recount_all(live)
    equal = 0
    for kind, sid in scopes:
        d = query.digest(kind, sid, pb.WINDOW_ALL)
        got = coordlib.digest_lines(d)
        want_lines = recounted.get((kind, sid), {})
        if got == want_lines and d.last_seq == last_seq:
            equal += 1
        else:
            example("digest", f"scope {pb.ScopeKind.Name(kind)} {sid!r}: broker "
                    f"{sorted(got.items())[:3]} last_seq {d.last_seq}, recount "
                    f"{sorted(want_lines.items())[:3]} last_seq {last_seq}")
    rep["digests"] = len(scopes)
    rep["digests_equal"] = equal
    rep["digests_differ"] = len(scopes) - equal
    rep["live"] = len(live)
    return rep


def main(argv):
    p = argparse.ArgumentParser(
        prog="checker.py", description="Check a coordd store against client logs: lost, "
        "duplicated, altered and phantom records, and digests against a recount.")
    p.add_argument("--query", required=True, help="the broker's query endpoint")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    p.add_argument("logs", nargs="+", help="client log files (relharness.ClientLog)")
    args = p.parse_args(argv)
    with coordlib.Query(args.query, timeout=30) as q:
        rep = check(q, args.logs)
    print(rep.line())
    if rep.details():
        print(rep.details())
    if args.json:
        print(json.dumps({k: v for k, v in rep.items() if k != "examples"}))
    return 0 if rep.ok() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
