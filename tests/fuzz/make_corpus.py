"""Write the seed corpora of tests/fuzz/fuzz_envelope.c, fuzz_query.c, fuzz_import.c and
fuzz_aggregate.c.

Run from anywhere as: /usr/bin/python3 tests/fuzz/make_corpus.py [CORPUS_DIR]
(the Debian interpreter: it has python3-protobuf). CORPUS_DIR defaults to
tests/fuzz/corpus beside this script; the seeds go to its envelope/, query/ and
import/ subdirectories. coord_pb2 is generated from proto/coord.proto into a
temporary directory with protoc, so nothing generated is committed. Output is
deterministic: rerunning rewrites the same bytes.

Envelope seeds: one valid Envelope of each body kind, and a few broken ones (wrong
case country, unknown language, NUL byte in a string, truncated frame). Dates match
the fuzz targets' fixed clock (FUZZ_NOW_MS, 2024-06-01T00:00:00Z).
Query seeds: one QueryRequest of each body, each scope and window, and a few bad
ones. Import seeds: small CSV and JSON Lines files behind the settings byte that
fuzz_import.c reads first. Aggregate seeds: stored values of the digest table (store
schema 3, daemon/digest.c; encoded by tests/integration/compactfmt.py, which the integration
tests use too) of a few shapes, and broken ones (a schema 2 protobuf Aggregate, a truncated
value, codes out of order).
"""

import importlib
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
# compactfmt: the stored aggregate format, shared with the integration tests.
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "integration")))
from compactfmt import encode_aggregate  # noqa: E402

NOW_MS = 1717200000000  # FUZZ_NOW_MS in fuzz_envelope.c
DATE_MS = 1717113600000  # 2024-05-31T00:00:00Z


def load_coord_pb2(tmp):
    subprocess.run(
        ["protoc", "--proto_path=" + PROTO_DIR, "--python_out=" + tmp,
         os.path.join(PROTO_DIR, "coord.proto")],
        check=True)
    sys.path.insert(0, tmp)
    return importlib.import_module("coord_pb2")


def envelope(pb, msg_id, **body):
    env = pb.Envelope(council="council-de", msg_id=msg_id, revision=1,
                      created_at=NOW_MS - 1000, **body)
    return env


def seeds(pb):
    event = envelope(pb, "event-1", event=pb.Event(
        kind=pb.EVENT_KIND_RALLY, country="DE", city="Berlin", date=DATE_MS,
        title="Rally at the Brandenburg Gate", organiser="Community council",
        participants=300, languages=["hy", "de", "en-GB"]))
    letter = envelope(pb, "letter-1", letter=pb.OutreachLetter(
        recipient_kind=pb.RECIPIENT_KIND_PARLIAMENT, recipient="Bundestag",
        recipient_country="DE", language="de", subject="An appeal\nfrom us",
        sent_at=DATE_MS, channel=pb.LETTER_CHANNEL_EMAIL))
    statement = envelope(pb, "statement-1", statement=pb.Statement(
        organisation="Youth union", country="AM", languages=["hy", "ru"],
        date=DATE_MS, title="Appeal"))
    petition = envelope(pb, "petition-1", petition=pb.Petition(
        target_kind=pb.PETITION_TARGET_NATIONAL_PARLIAMENT,
        target="Assemblée nationale", country="FR", date=DATE_MS,
        signatures=12000, title="Petition", language="fr"))
    media = envelope(pb, "media-1", media=pb.MediaReport(
        kind=pb.MEDIA_KIND_BROADCAST, outlet="Regional TV", country="US",
        language="en-US", date=DATE_MS, local_sources=336, title="Report",
        url="https://example.org/report"))
    retraction = envelope(pb, "event-1", retraction=pb.Retraction(
        reason="Entered twice"))
    retraction.revision = 2

    bad_codes = envelope(pb, "event-2", event=pb.Event(
        kind=pb.EVENT_KIND_GATHERING, country="de", date=DATE_MS,
        title="Gathering", languages=["english"]))
    nul_in_title = envelope(pb, "event-3", event=pb.Event(
        kind=pb.EVENT_KIND_RALLY, country="DE", date=DATE_MS,
        title="Rally\x00hidden"))

    out = {
        "event.bin": event.SerializeToString(),
        "letter.bin": letter.SerializeToString(),
        "statement.bin": statement.SerializeToString(),
        "petition.bin": petition.SerializeToString(),
        "media.bin": media.SerializeToString(),
        "retraction.bin": retraction.SerializeToString(),
        "bad_codes.bin": bad_codes.SerializeToString(),
        "nul_in_title.bin": nul_in_title.SerializeToString(),
    }
    out["truncated.bin"] = out["event.bin"][:-5]
    return out


def query_seeds(pb):
    Q = pb.QueryRequest
    def digest(**kw):
        return Q(request_id=7, digest=pb.DigestRequest(**kw))
    out = {
        "digest_all.bin": digest(),
        "digest_council.bin": digest(scope=pb.Scope(kind=pb.SCOPE_KIND_COUNCIL,
                                                    id="council-de"),
                                     window=pb.WINDOW_LAST_24H, headlines=3),
        "digest_country.bin": digest(scope=pb.Scope(kind=pb.SCOPE_KIND_COUNTRY, id="AM"),
                                     window=pb.WINDOW_LAST_1H),
        "digest_range.bin": digest(window=pb.WINDOW_RANGE, start=DATE_MS, end=NOW_MS),
        "digest_bad_range.bin": digest(window=pb.WINDOW_RANGE, start=NOW_MS, end=DATE_MS),
        "digest_bad_country.bin": digest(scope=pb.Scope(kind=pb.SCOPE_KIND_COUNTRY,
                                                        id="XX")),
        "history.bin": Q(request_id=8, history=pb.HistoryRequest(after_seq=5, limit=10,
                                                                 council="council-de")),
        "status.bin": Q(request_id=9, status=pb.StatusRequest(council="council-de",
                                                             msg_id="event-1")),
        "status_no_id.bin": Q(request_id=10, status=pb.StatusRequest(council="fr")),
        "stats.bin": Q(request_id=11, stats=pb.StatsRequest()),
        "empty.bin": Q(request_id=12),
    }
    return {name: m.SerializeToString() for name, m in out.items()}


CSV_EVENTS = (
    "category,msg_id,kind,country,city,date,title,languages\n"
    "event,ev-1,rally,DE,Berlin,2024-05-31,\"Rally, at the gate\",hy;de\n"
    "event,ev-2,gathering,fr,Paris,2024-05-31,Gathering,en\n"
    "\n"
    "letter,le-1,,DE,,2024-05-31,\"Two\nlines\",\n"
)
CSV_LETTERS = (
    "\ufeffmsg_id;recipient_kind;recipient;recipient_country;language;subject;sent_at\n"
    "le-2;parliament;Bundestag;DE;de;An appeal;2024-05-30\n"
    "le-2;parliament;Bundestag;DE;de;Another appeal;2024-05-30\n"
)
JSONL = (
    '{"council":"council-de","msgId":"ev-9","revision":1,"event":{"kind":"EVENT_KIND_RALLY",'
    '"country":"DE","date":"1717113600000","title":"Rally","languages":["hy","de"]}}\n'
    '{"msg_id":"me-1","media":{"kind":"MEDIA_KIND_BROADCAST","outlet":"TV","country":"US",'
    '"language":"en-US","date":"1717113600000","url":"https://example.org/x"}}\n'
    '{"msg_id":"ev-9","retraction":{"reason":"twice"},"revision":2}\n'
    '{"event": {"kind": 99}}\n'
    'not json\n'
)


def import_seeds():
    # First byte: bit 0 CSV, bit 1 --category event, bit 2 ';' as the delimiter.
    return {
        "events.csv": b"\x01" + CSV_EVENTS.encode(),
        "events_default_category.csv": b"\x03" + CSV_EVENTS.encode(),
        "letters_semicolon.csv": b"\x07" + CSV_LETTERS.encode(),
        "records.jsonl": b"\x00" + JSONL.encode(),
    }


def aggregate_seeds(pb):
    event = (1, 1, 3, 450, [[("DE", 2), ("FR", 1)], [("de", 2), ("fr", 1), ("hy", 3)],
                            [("c01", 2), ("c02", 1)]])
    letter = (2, 3, 1, 0, [[("AM", 1)], [("hy", 1)], [("c01", 1)]])
    petition = (4, 2, 2, (1 << 40) + 7, [[("US", 2)], [("en", 2)], [("c03", 2)]])
    statement = (3, 0, 1, 0, [[], [("ru", 1)], [("council-with-a-long-id-0123456", 1)]])
    negative_kind = (5, -1, 1, 0, [[], [], [("c04", 1)]])
    whole = encode_aggregate([event, letter, statement, petition])
    agg = pb.Aggregate()
    line = agg.lines.add(category=1, kind=1, count=3, sum=450)
    line.countries.add(code="DE", count=2)
    line.councils.add(code="c01", count=3)
    unordered = bytearray(encode_aggregate([event]))
    unordered[3:5] = b"FR"  # the first code, now after the second
    return {
        "event.bin": encode_aggregate([event]),
        "whole_campaign.bin": whole,
        "negative_kind.bin": encode_aggregate([negative_kind]),
        "schema2_protobuf.bin": agg.SerializeToString(),
        "truncated.bin": whole[:-3],
        "unordered_codes.bin": bytes(unordered),
    }


def write(outdir, files):
    os.makedirs(outdir, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
        print(f"{os.path.basename(outdir)}/{name}: {len(data)} bytes")


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    with tempfile.TemporaryDirectory() as tmp:
        pb = load_coord_pb2(tmp)
        write(os.path.join(corpus, "envelope"), seeds(pb))
        write(os.path.join(corpus, "query"), query_seeds(pb))
        write(os.path.join(corpus, "aggregate"), aggregate_seeds(pb))
    write(os.path.join(corpus, "import"), import_seeds())


if __name__ == "__main__":
    main()
