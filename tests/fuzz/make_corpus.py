"""Write the seed corpus of tests/fuzz/fuzz_envelope.c.

Run from anywhere as: /usr/bin/python3 tests/fuzz/make_corpus.py [OUTDIR]
(the Debian interpreter: it has python3-protobuf). OUTDIR defaults to
tests/fuzz/corpus/envelope beside this script. coord_pb2 is generated from
proto/coord.proto into a temporary directory with protoc, so nothing generated
is committed. Output is deterministic: rerunning rewrites the same bytes.

Seeds: one valid Envelope of each body kind, and a few broken ones (wrong case
country, unknown language, NUL byte in a string, truncated frame). Dates match
the fuzz target's fixed clock (FUZZ_NOW_MS, 2024-06-01T00:00:00Z).
"""

import importlib
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))

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


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "corpus", "envelope")
    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pb = load_coord_pb2(tmp)
        for name, data in sorted(seeds(pb).items()):
            with open(os.path.join(outdir, name), "wb") as f:
                f.write(data)
            print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
