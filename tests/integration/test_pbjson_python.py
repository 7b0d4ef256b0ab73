"""Cross-check of libcoord's proto3 JSON mapping (clients/libcoord/pbjson.c) against
python3-protobuf's google.protobuf.json_format, the reference implementation.

Seeded random messages of every coord.v1 type (every oneof member, repeated fields,
extreme and unknown values, non-ASCII and control characters) go both ways through the C
helper tests/unit/pbjson_tool, one process per batch:

- C encodes: the message's bytes go in, C's JSON comes out; json_format.Parse must give
  the same message, and the JSON must equal MessageToDict's, key order included.
- C decodes: MessageToJson's text (lowerCamelCase names, or the original names) goes in;
  the bytes C packs must parse to the same message and equal SerializeToString().
- Both reject a set of malformed inputs.

Environment: PBJSON_TOOL is the helper (meson passes it; default build/tests/unit/
pbjson_tool); COORD_PB2_DIR holds coord_pb2 (see conftest.py). Needs no daemon.
"""

import base64
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as FD

import coord_pb2 as pb

HERE = Path(__file__).resolve().parent
TOOL = os.environ.get("PBJSON_TOOL") or str(HERE.parent.parent / "build" / "tests" / "unit"
                                            / "pbjson_tool")
SEED = 20240601
TIMEOUT = 120

MESSAGE_TYPES = [pb.DESCRIPTOR.message_types_by_name[name]
                 for name in sorted(pb.DESCRIPTOR.message_types_by_name)]
# Envelope and QueryResponse carry the most structure: they get more samples.
SAMPLES = {"Envelope": 120, "QueryResponse": 80, "Publication": 40, "QueryRequest": 40}
DEFAULT_SAMPLES = 12

# Characters strings are drawn from: ASCII, JSON's escapes, controls (no NUL: protobuf-c
# strings end there), Latin-1, Armenian, CJK, U+2028/9, DEL, and astral emoji.
ALPHABET = (list("abcXYZ019 -_.:/") + ['"', "\\", "\n", "\t", "\r", "\b", "\f", "\x01",
                                        "\x1f", "\x7f", "é", "ß", "Հ", "ա", "中", "文",
                                        "\u2028", "\u2029", "\ufeff", "\U0001F642",
                                        "\U0001F1E6", "</"])

INT32 = (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32)
UINT32 = (FD.TYPE_UINT32, FD.TYPE_FIXED32)
INT64 = (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64)
UINT64 = (FD.TYPE_UINT64, FD.TYPE_FIXED64)


def pick_int(rng, lo, hi):
    r = rng.random()
    if r < 0.3:
        return rng.choice([lo, hi, lo + 1, hi - 1, 1, -1 if lo < 0 else 2])
    if r < 0.5:
        return rng.randint(max(lo, -1000), min(hi, 1000))
    # 2**53 + 1 and friends: values a double cannot hold exactly.
    if r < 0.6 and hi > 2**53:
        return rng.choice([2**53 + 1, 2**63 - 1, 2**63 if hi > 2**63 else 2**62 + 1])
    return rng.randint(lo, hi)


def scalar_value(rng, field):
    t = field.type
    if t in INT32:
        return pick_int(rng, -2**31, 2**31 - 1)
    if t in UINT32:
        return pick_int(rng, 0, 2**32 - 1)
    if t in INT64:
        return pick_int(rng, -2**63, 2**63 - 1)
    if t in UINT64:
        return pick_int(rng, 0, 2**64 - 1)
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.7
    if t == FD.TYPE_STRING:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
    if t == FD.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
    if t == FD.TYPE_ENUM:
        if rng.random() < 0.1:
            return rng.choice([99, 1000, -5, 2**31 - 1])  # proto3 enums are open
        return rng.choice(field.enum_type.values).number
    raise AssertionError(f"unexpected field type {t} in coord.proto")


def fill(rng, msg, depth=0):
    """Sets a random subset of msg's fields (and one or no member of each oneof)."""
    desc = msg.DESCRIPTOR
    chosen = {}
    for oneof in desc.oneofs:
        chosen[oneof.name] = rng.choice(list(oneof.fields) + [None])
    for field in desc.fields:
        if field.containing_oneof is not None:
            if chosen[field.containing_oneof.name] is not field:
                continue
        elif rng.random() < 0.2:
            continue
        if field.label == FD.LABEL_REPEATED:
            for _ in range(rng.randint(0, 4)):
                if field.type == FD.TYPE_MESSAGE:
                    fill(rng, getattr(msg, field.name).add(), depth + 1)
                else:
                    getattr(msg, field.name).append(scalar_value(rng, field))
        elif field.type == FD.TYPE_MESSAGE:
            sub = getattr(msg, field.name)
            sub.SetInParent()  # set even when it stays empty
            if rng.random() < 0.8:
                fill(rng, sub, depth + 1)
        else:
            setattr(msg, field.name, scalar_value(rng, field))
    return msg


def samples():
    rng = random.Random(SEED)
    out = {}
    for desc in MESSAGE_TYPES:
        cls = getattr(pb, desc.name)
        out[desc.name] = [fill(rng, cls()) for _ in range(SAMPLES.get(desc.name,
                                                                      DEFAULT_SAMPLES))]
    return out


SAMPLE_SETS = samples()


def run_tool(mode, type_name, lines):
    if not os.access(TOOL, os.X_OK):
        pytest.fail(f"pbjson_tool {TOOL!r} not found (set PBJSON_TOOL)")
    text = "".join(line + "\n" for line in lines)
    proc = subprocess.run([TOOL, mode, type_name], input=text.encode(), capture_output=True,
                          timeout=TIMEOUT, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in stderr, stderr
    out = proc.stdout.decode().split("\n")
    assert out[-1] == ""
    assert len(out) - 1 == len(lines)
    return out[:-1]


def canonical(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_sample_coverage():
    """The samples set every oneof member and, somewhere, a big uint64."""
    for desc in MESSAGE_TYPES:
        for oneof in desc.oneofs:
            seen = {m.WhichOneof(oneof.name) for m in SAMPLE_SETS[desc.name]}
            assert {f.name for f in oneof.fields} <= seen, (desc.name, oneof.name, seen)
    assert any(m.seq >= 2**63 for m in SAMPLE_SETS["Ack"])
    assert sum(len(s) for s in SAMPLE_SETS.values()) >= 300


@pytest.mark.parametrize("type_name", [d.name for d in MESSAGE_TYPES])
def test_c_encoding_parses_in_python(type_name):
    msgs = SAMPLE_SETS[type_name]
    out = run_tool("to-json", type_name, [m.SerializeToString().hex() for m in msgs])
    cls = getattr(pb, type_name)
    for msg, text in zip(msgs, out):
        assert not text.startswith("ERR"), (text, msg)
        parsed = json_format.Parse(text, cls())
        assert parsed == msg, (text, msg)
        assert canonical(json.loads(text)) == canonical(json_format.MessageToDict(msg)), text


@pytest.mark.parametrize("type_name", [d.name for d in MESSAGE_TYPES])
@pytest.mark.parametrize("original_names", [False, True], ids=["camel", "original"])
def test_python_json_decodes_in_c(type_name, original_names):
    msgs = SAMPLE_SETS[type_name]
    texts = [json_format.MessageToJson(m, indent=None, preserving_proto_field_name=original_names)
             for m in msgs]
    out = run_tool("from-json", type_name, texts)
    cls = getattr(pb, type_name)
    for msg, text, hexed in zip(msgs, texts, out):
        assert not hexed.startswith("ERR"), (hexed, text)
        data = bytes.fromhex(hexed)
        assert cls.FromString(data) == msg, text
        assert data == msg.SerializeToString(), text


def test_round_trip_is_canonical():
    """C's decode-then-encode of Python's pretty JSON gives Python's compact JSON."""
    msgs = SAMPLE_SETS["Envelope"] + SAMPLE_SETS["QueryResponse"]
    texts = [canonical(json_format.MessageToDict(m)) for m in msgs]
    # Python's own pretty output spans lines; feed it as one line per message.
    pretty = [json_format.MessageToJson(m).replace("\n", " ") for m in msgs]
    half = len(SAMPLE_SETS["Envelope"])
    out = run_tool("round-trip", "Envelope", pretty[:half]) + \
        run_tool("round-trip", "QueryResponse", pretty[half:])
    for want, got in zip(texts, out):
        # Same text up to JSON string escapes (jansson writes \u001F, Python \u001f).
        assert canonical(json.loads(got)) == want


def test_alternative_spellings_agree():
    """Inputs in non-canonical forms that both parsers accept decode to the same message."""
    cases = [
        ("Envelope", '{"revision": "7", "created_at": 5, "msg_id": "x"}'),
        ("Envelope", '{"revision": 7.0, "createdAt": "-9223372036854775808"}'),
        ("Envelope", '{"event": {"kind": 1, "languages": []}, "council": null}'),
        ("Envelope", '{"event": {"kind": "EVENT_KIND_RALLY", "languages": null}}'),
        ("Event", '{"kind": 99}'),
        ("Item", '{"envelope": "AAE", "seq": "18446744073709551615"}'),
        ("Item", '{"envelope": "-_8="}'),
        ("Ack", '{"seq": 1e3, "status": "ACK_STATUS_ACCEPTED"}'),
        ("DigestLine", '{"kind": -2147483648, "countries": [{"code": "DE", "count": "2"}]}'),
        ("HistoryPage", '{"complete": false, "items": [{}]}'),
        ("QueryRequest", '{"stats": {}, "request_id": 1}'),
    ]
    for type_name, text in cases:
        cls = getattr(pb, type_name)
        want = json_format.Parse(text, cls())
        (hexed,) = run_tool("from-json", type_name, [text])
        assert not hexed.startswith("ERR"), (hexed, text)
        assert cls.FromString(bytes.fromhex(hexed)) == want, text


def test_both_reject_malformed():
    cases = [
        ("Envelope", '{"bogus": 1}'),
        ("Envelope", '{"event": {}, "letter": {}}'),
        ("Envelope", '{"event": {"kind": "RALY"}}'),
        ("Envelope", '{"revision": 4294967296}'),
        ("Envelope", '{"revision": -1}'),
        ("Envelope", '{"revision": 1.5}'),
        ("Envelope", '{"revision": true}'),
        ("Envelope", '{"council": 5}'),
        ("Envelope", '{"event": "x"}'),
        ("Envelope", '{"event": {"languages": [null]}}'),
        ("Envelope", '{"createdAt": "9223372036854775808"}'),
        ("Ack", '{"seq": "-1"}'),
        ("HistoryPage", '{"complete": 1}'),
        ("DigestLine", '{"kind": 2147483648}'),
        ("Envelope", '{"council": "a"} x'),
    ]
    for type_name, text in cases:
        with pytest.raises(json_format.ParseError):
            json_format.Parse(text, getattr(pb, type_name)())
        (out,) = run_tool("from-json", type_name, [text])
        assert out.startswith("ERR "), (text, out)


def test_bytes_are_standard_padded_base64():
    msgs = SAMPLE_SETS["Item"]
    out = run_tool("to-json", "Item", [m.SerializeToString().hex() for m in msgs])
    for msg, text in zip(msgs, out):
        if msg.envelope:
            assert json.loads(text)["envelope"] == base64.b64encode(msg.envelope).decode()


def test_c_is_stricter():
    """Inputs python3-protobuf 4.21 lets through and C rejects: a field under both of its
    names (Python keeps the last), and a top-level array (Python reads it as empty)."""
    cases = [
        ("Envelope", '{"msgId": "a", "msg_id": "b"}'),
        ("Envelope", '[]'),
    ]
    for type_name, text in cases:
        json_format.Parse(text, getattr(pb, type_name)())
        (out,) = run_tool("from-json", type_name, [text])
        assert out.startswith("ERR "), (text, out)
