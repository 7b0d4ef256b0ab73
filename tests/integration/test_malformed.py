"""Malformed and invalid input: each gets one REJECTED Ack with the expected reason and a
message; nothing is stored; the daemon goes on serving valid messages."""

import random

import pytest

import coord_pb2 as pb
from coordlib import (ACCEPTED, AckTimeout, DAY_MS, REJECTED, TIME_MIN_MS, ack_str, day_ms, expect_ack,
                      gen_envelope, now_ms, with_raw_bytes)

R = pb  # reasons: R.REASON_*

# name -> (builder() -> Envelope | bytes | [frames], expected reason(s), echo)
# echo: the Ack must carry the Envelope's msg_id and revision.
CASES = {}


def case(name, reasons, echo=True):
    def register(builder):
        assert name not in CASES, name
        CASES[name] = (builder, reasons, echo)
        return builder
    return register


def simple(name, reasons, body="event", echo=True, **kw):
    """A case that is gen_envelope(body, **kw)."""
    case(name, reasons, echo)(lambda: gen_envelope(body, **kw))


def raw(name, reasons, body, path, raw_bytes, echo=True, **kw):
    """A case whose string field `path` holds `raw_bytes` (e.g. invalid UTF-8)."""
    case(name, reasons, echo)(lambda: with_raw_bytes(gen_envelope(body, **kw), path, raw_bytes))


# --- not an Envelope ------------------------------------------------------------------
@case("random_bytes", R.REASON_MALFORMED, echo=False)
def _random_bytes():
    # Field number 0 with wire type 7 is invalid in any protobuf message.
    return b"\x07" + random.Random(1).randbytes(300)


@case("truncated_envelope", R.REASON_MALFORMED, echo=False)
def _truncated():
    # The body is the last field; cutting its end leaves a length prefix past the end.
    return gen_envelope("event").SerializeToString()[:-5]


@case("truncated_varint", R.REASON_MALFORMED, echo=False)
def _truncated_varint():
    return b"\x18\xff\xff"


@case("length_past_end", R.REASON_MALFORMED, echo=False)
def _length_past_end():
    return b"\x0a\x7fc01"


@case("empty_frame", R.REASON_MALFORMED, echo=False)
def _empty():
    return b""


# --- framing: exactly one frame ---------------------------------------------------------
@case("two_frames", R.REASON_BAD_FRAMING, echo=False)
def _two_frames():
    return [gen_envelope("event").SerializeToString(), gen_envelope("event").SerializeToString()]


@case("three_frames", R.REASON_BAD_FRAMING, echo=False)
def _three_frames():
    return [gen_envelope(b).SerializeToString() for b in ("event", "letter", "media")]


@case("empty_delimiter_then_envelope", R.REASON_BAD_FRAMING, echo=False)
def _req_style():
    return [b"", gen_envelope("event").SerializeToString()]


@case("envelope_then_empty_frame", R.REASON_BAD_FRAMING, echo=False)
def _trailing_empty():
    return [gen_envelope("event").SerializeToString(), b""]


# --- required fields ------------------------------------------------------------------------
simple("no_body", R.REASON_MISSING_FIELD, body=None)
simple("created_at_zero", R.REASON_MISSING_FIELD, created_at=0)
simple("msg_id_empty", R.REASON_MISSING_FIELD, msg_id="", echo=False)
simple("council_empty", R.REASON_MISSING_FIELD, council="")
REQUIRED = {
    "event": dict(kind=0, country="", date=0, title=""),
    "letter": dict(recipient_kind=0, recipient="", recipient_country="", language="",
                   sent_at=0),
    "statement": dict(organisation="", country="", languages=[], date=0),
    "petition": dict(target_kind=0, target="", country="", date=0),
    "media": dict(kind=0, outlet="", country="", language="", date=0),
}
for _body, _fields in REQUIRED.items():
    for _field, _empty_value in _fields.items():
        simple(f"missing_{_body}_{_field}", R.REASON_MISSING_FIELD, body=_body,
               **{_field: _empty_value})

# --- revision and ids -----------------------------------------------------------------------
simple("revision_zero", R.REASON_INVALID_REVISION, revision=0)
simple("council_upper_case", R.REASON_INVALID_ID, council="C01")
simple("council_with_space", R.REASON_INVALID_ID, council="c 01")
simple("council_leading_underscore", R.REASON_INVALID_ID, council="_c01")
simple("council_leading_dash", R.REASON_INVALID_ID, council="-c01")
simple("council_punctuation", R.REASON_INVALID_ID, council="c01!")
simple("council_too_long", (R.REASON_INVALID_ID, R.REASON_FIELD_TOO_LONG), council="c" * 33)
simple("council_unregistered", R.REASON_UNKNOWN_COUNCIL, council="c99")
simple("council_unregistered_2", R.REASON_UNKNOWN_COUNCIL, council="zz-top_1")
simple("msg_id_with_space", R.REASON_INVALID_ID, msg_id="has space", echo=False)
simple("msg_id_non_ascii", R.REASON_INVALID_ID, msg_id="héllo-wörld", echo=False)
simple("msg_id_tab", (R.REASON_INVALID_ID, R.REASON_INVALID_UTF8), msg_id="tab\tid",
       echo=False)
simple("msg_id_del", (R.REASON_INVALID_ID, R.REASON_INVALID_UTF8), msg_id="del\x7fid",
       echo=False)
simple("msg_id_too_long", (R.REASON_FIELD_TOO_LONG, R.REASON_INVALID_ID), msg_id="m" * 129,
       echo=False)
raw("msg_id_invalid_utf8", (R.REASON_INVALID_ID, R.REASON_INVALID_UTF8), "event", "msg_id",
    b"id-\xff\xfe-bad", echo=False)
raw("council_invalid_utf8",
    (R.REASON_INVALID_ID, R.REASON_INVALID_UTF8, R.REASON_UNKNOWN_COUNCIL), "event", "council",
    b"c0\xc3\x28\xa0\xa1", echo=False)

# --- timestamps ------------------------------------------------------------------------------
simple("created_at_before_2000", R.REASON_INVALID_TIMESTAMP, created_at=TIME_MIN_MS - 1)
simple("created_at_negative", R.REASON_INVALID_TIMESTAMP, created_at=-1)
case("created_at_two_days_ahead", R.REASON_INVALID_TIMESTAMP)(
    lambda: gen_envelope("event", created_at=now_ms() + 2 * DAY_MS))
simple("created_at_far_future", R.REASON_INVALID_TIMESTAMP, created_at=2 ** 62)
simple("event_date_before_2000", R.REASON_INVALID_TIMESTAMP, date=TIME_MIN_MS - DAY_MS)
case("event_date_400_days_ahead", R.REASON_INVALID_TIMESTAMP)(
    lambda: gen_envelope("event", date=day_ms(400)))
simple("letter_sent_at_negative", R.REASON_INVALID_TIMESTAMP, body="letter", sent_at=-5)
case("statement_date_400_days_ahead", R.REASON_INVALID_TIMESTAMP)(
    lambda: gen_envelope("statement", date=day_ms(400)))
simple("petition_date_1999", R.REASON_INVALID_TIMESTAMP, body="petition",
       date=TIME_MIN_MS - 1)
case("media_date_far_future", R.REASON_INVALID_TIMESTAMP)(
    lambda: gen_envelope("media", date=2 ** 60))

# --- countries -------------------------------------------------------------------------------
simple("country_lower_case", R.REASON_INVALID_COUNTRY, country="de")
simple("country_unassigned_XX", R.REASON_INVALID_COUNTRY, country="XX")
simple("country_alpha3", R.REASON_INVALID_COUNTRY, country="DEU")
simple("country_one_letter", R.REASON_INVALID_COUNTRY, country="D")
simple("country_reserved_UK", R.REASON_INVALID_COUNTRY, country="UK")
simple("letter_country_ZZ", R.REASON_INVALID_COUNTRY, body="letter", recipient_country="ZZ")
simple("statement_country_lower", R.REASON_INVALID_COUNTRY, body="statement", country="fr")
simple("petition_country_EU", R.REASON_INVALID_COUNTRY, body="petition", country="EU")
simple("media_country_digits", R.REASON_INVALID_COUNTRY, body="media", country="12")

# --- languages -------------------------------------------------------------------------------
simple("event_language_word", R.REASON_INVALID_LANGUAGE, languages=["en", "english"])
simple("event_language_digits", R.REASON_INVALID_LANGUAGE, languages=["1234"])
simple("letter_language_xx", R.REASON_INVALID_LANGUAGE, body="letter", language="xx")
simple("letter_language_underscore", R.REASON_INVALID_LANGUAGE, body="letter",
       language="en_GB")
simple("letter_language_double_dash", R.REASON_INVALID_LANGUAGE, body="letter",
       language="en--GB")
simple("statement_language_zz", R.REASON_INVALID_LANGUAGE, body="statement",
       languages=["hy", "zz"])
simple("statement_language_trailing_dash", R.REASON_INVALID_LANGUAGE, body="statement",
       languages=["en-"])
simple("media_language_one_letter", R.REASON_INVALID_LANGUAGE, body="media", language="e")
simple("petition_language_qq", R.REASON_INVALID_LANGUAGE, body="petition", language="qq")
simple("language_tag_too_long", (R.REASON_INVALID_LANGUAGE, R.REASON_FIELD_TOO_LONG),
       body="letter", language="en-" + "abcdefgh-" * 3 + "abcdefgh")

# --- enums -----------------------------------------------------------------------------------
simple("event_kind_99", R.REASON_INVALID_ENUM, kind=99)
simple("event_kind_negative", R.REASON_INVALID_ENUM, kind=-1)
simple("letter_recipient_kind_42", R.REASON_INVALID_ENUM, body="letter", recipient_kind=42)
simple("letter_channel_77", R.REASON_INVALID_ENUM, body="letter", channel=77)
simple("petition_target_kind_9", R.REASON_INVALID_ENUM, body="petition", target_kind=9)
simple("media_kind_4", R.REASON_INVALID_ENUM, body="media", kind=4)

# --- field lengths ---------------------------------------------------------------------------
simple("title_1025_bytes", R.REASON_FIELD_TOO_LONG, title="t" * 1025)
simple("title_513_two_byte_chars", R.REASON_FIELD_TOO_LONG, title="é" * 513)
simple("city_257_bytes", R.REASON_FIELD_TOO_LONG, city="c" * 257)
simple("organiser_257_bytes", R.REASON_FIELD_TOO_LONG, organiser="o" * 257)
simple("event_17_languages", R.REASON_FIELD_TOO_LONG, languages=["en"] * 17)
simple("letter_recipient_257", R.REASON_FIELD_TOO_LONG, body="letter", recipient="r" * 257)
simple("letter_subject_1025", R.REASON_FIELD_TOO_LONG, body="letter", subject="s" * 1025)
simple("statement_organisation_257", R.REASON_FIELD_TOO_LONG, body="statement",
       organisation="o" * 257)
simple("petition_target_257", R.REASON_FIELD_TOO_LONG, body="petition", target="t" * 257)
simple("media_outlet_257", R.REASON_FIELD_TOO_LONG, body="media", outlet="o" * 257)
simple("media_url_1025", R.REASON_FIELD_TOO_LONG, body="media",
       url="https://example.org/" + "u" * 1005)
simple("retraction_reason_1025", R.REASON_FIELD_TOO_LONG, body="retraction", revision=2,
       reason="r" * 1025)

# --- UTF-8 -----------------------------------------------------------------------------------
raw("title_invalid_bytes", R.REASON_INVALID_UTF8, "event", "event.title", b"title \xff\xfe end")
raw("title_overlong_slash", R.REASON_INVALID_UTF8, "event", "event.title", b"title \xc0\xaf end")
raw("title_surrogate", R.REASON_INVALID_UTF8, "event", "event.title", b"title \xed\xa0\x80 end")
raw("title_above_10ffff", R.REASON_INVALID_UTF8, "event", "event.title",
    b"title \xf4\x90\x80\x80 end")
raw("title_truncated_sequence", R.REASON_INVALID_UTF8, "event", "event.title",
    b"title \xe2\x82 end")
raw("title_ends_mid_sequence", R.REASON_INVALID_UTF8, "event", "event.title", b"title end\xe2")
raw("letter_recipient_latin1", R.REASON_INVALID_UTF8, "letter", "letter.recipient",
    b"Assembl\xe9e nationale")
raw("statement_organisation_invalid", R.REASON_INVALID_UTF8, "statement",
    "statement.organisation", b"Union \x80\x80 of Students")
raw("media_outlet_invalid", R.REASON_INVALID_UTF8, "media", "media.outlet", b"Le \xfe Monde")
raw("retraction_reason_invalid", R.REASON_INVALID_UTF8, "retraction", "retraction.reason",
    b"reason \xff", revision=2)
simple("title_control_character", R.REASON_INVALID_UTF8, title="bell\x07 rally")
simple("organiser_escape_sequence", R.REASON_INVALID_UTF8, organiser="\x1b[31mred\x1b[0m")
simple("title_nul", R.REASON_INVALID_UTF8, title="before\x00after")


def item_count(coordd):
    if not coordd.is_local:
        return None
    with coordd.store() as store:
        return store.item_count()


def check_rejected(d, client, msg, reasons, echo):
    """Send `msg`, expect one REJECTED Ack, nothing stored, and a valid probe accepted
    right after (which also shows no second Ack was sent for `msg`)."""
    count0 = item_count(d)
    client.send(msg)
    ack = client.recv_ack()
    expect_ack(ack, REJECTED, reasons)
    # A decodable Envelope with a valid msg_id is echoed. (Frames built by hand with
    # invalid UTF-8 are not decodable by a strict proto3 decoder, so no echo is required.)
    if echo and isinstance(msg, pb.Envelope):
        assert (ack.msg_id, ack.revision) == (msg.msg_id, msg.revision), (
            f"Ack does not echo {msg.msg_id!r} rev {msg.revision}: {ack_str(ack)}")
    if isinstance(msg, list):
        assert ack.msg_id == "", "a BAD_FRAMING Ack carries no msg_id"
    assert item_count(d) == count0, "a rejected message changed the store"
    probe = client.env("event")
    expect_ack(client.request(probe), ACCEPTED, msg_id=probe.msg_id, revision=1)
    if count0 is not None:
        assert item_count(d) == count0 + 1
    return ack


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejected_with_reason(shared_coordd, name):
    builder, reasons, echo = CASES[name]
    msg = builder()
    if isinstance(msg, pb.Envelope):
        assert msg.SerializeToString(), "test bug: empty envelope"
    with shared_coordd.council("c01") as c:
        check_rejected(shared_coordd, c, msg, reasons, echo)


def test_garbage_is_not_a_protobuf():
    """The MALFORMED cases really are undecodable (a check of the test data)."""
    from google.protobuf.message import DecodeError
    for name in ("random_bytes", "truncated_envelope", "truncated_varint", "length_past_end"):
        with pytest.raises(DecodeError):
            pb.Envelope.FromString(CASES[name][0]())


def test_rejects_interleaved_with_valid_in_one_burst(shared_coordd):
    rng = random.Random(7)
    names = sorted(CASES)
    count0 = item_count(shared_coordd)
    with shared_coordd.council("c02") as c:
        expected = []  # (valid?, msg)
        for i in range(120):
            if i % 2:
                expected.append((True, c.env(["event", "letter", "media"][i % 3])))
            else:
                expected.append((False, CASES[rng.choice(names)][0]()))
        for _, msg in expected:
            c.send(msg)
        acks = c.collect(len(expected))
        for valid, msg in expected:
            if valid:
                (ack,) = c.acks_for((msg.msg_id, msg.revision))
                expect_ack(ack, ACCEPTED)
        n_rejected = sum(a.status == REJECTED for a in acks)
        assert n_rejected == 60, f"{n_rejected} REJECTED of 60 invalid"
        assert all(a.message for a in acks if a.status == REJECTED)
    if count0 is not None:
        assert item_count(shared_coordd) == count0 + 60


def test_random_mutations_each_get_one_ack(shared_coordd):
    """Bit flips and cuts of valid envelopes: whatever each becomes, it gets exactly one
    Ack (ACCEPTED, DUPLICATE or REJECTED) and the daemon keeps serving; the store grows by
    the number accepted."""
    rng = random.Random(12345)
    count0 = item_count(shared_coordd)
    msgs = []
    for i in range(400):
        data = bytearray(gen_envelope(["event", "letter", "statement", "petition",
                                       "media"][i % 5]).SerializeToString())
        op = i % 4
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data = data[:rng.randrange(len(data))]
        elif op == 2:
            pos = rng.randrange(len(data))
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            data = bytearray(rng.randbytes(rng.randint(1, 200)))
        msgs.append(bytes(data))
    with shared_coordd.council("c03") as c:
        for m in msgs:
            c.send(m)
        acks = c.collect(len(msgs))
        for a in acks:
            assert a.status in (ACCEPTED, pb.ACK_STATUS_DUPLICATE, REJECTED), a
            if a.status == REJECTED:
                assert a.message
        probe = c.env("event")
        expect_ack(c.request(probe), ACCEPTED, msg_id=probe.msg_id)
    n_accepted = sum(a.status == ACCEPTED for a in acks)
    if count0 is not None:
        assert item_count(shared_coordd) == count0 + n_accepted + 1


def sized_envelope(size):
    """An Envelope of exactly `size` bytes (an over-long title pads it)."""
    env = gen_envelope("event")
    for t in range(max(0, size - env.ByteSize() - 8), size):
        env.event.title = "t" * t
        if env.ByteSize() == size:
            return env.SerializeToString()
    raise AssertionError(f"cannot build an envelope of {size} bytes")


@pytest.mark.local_only
def test_frame_over_max_message_bytes(coordd_factory):
    d = coordd_factory(overrides={"ingest": {"max_message_bytes": 4096}})
    with d.council("c01") as c:
        for size in (4097, 5000, 16384):
            check_rejected(d, c, sized_envelope(size), pb.REASON_TOO_LARGE, echo=False)
        # Exactly at the limit the frame is decoded: its title is what is wrong.
        check_rejected(d, c, sized_envelope(4096), pb.REASON_FIELD_TOO_LONG, echo=False)
        check_rejected(d, c, b"\x07" + bytes(4200), pb.REASON_TOO_LARGE, echo=False)
        # A multi-frame message with a big frame is BAD_FRAMING or TOO_LARGE.
        check_rejected(d, c, [sized_envelope(5000), b"x"],
                       (pb.REASON_BAD_FRAMING, pb.REASON_TOO_LARGE), echo=False)


@pytest.mark.local_only
@pytest.mark.parametrize("size", [16385, 1 << 20])
def test_large_frame_below_drop_limit_is_rejected_too_large(coordd_factory, size):
    """Frames over max_message_bytes but within max(1 MiB, 4 x the limit) are read and
    answered TOO_LARGE."""
    d = coordd_factory(overrides={"ingest": {"max_message_bytes": 4096}})
    with d.council("c01", timeout=5) as c:
        check_rejected(d, c, sized_envelope(size), pb.REASON_TOO_LARGE, echo=False)


@pytest.mark.local_only
def test_frame_above_drop_limit_drops_the_connection(coordd_factory):
    """A frame above max(1 MiB, 4 x max_message_bytes) is never buffered: libzmq drops the
    connection (no ack; the client's resend timer fires). The broker keeps serving, stores
    nothing for it, and the client's reconnected socket works."""
    d = coordd_factory(overrides={"ingest": {"max_message_bytes": 4096}})
    count0 = item_count(d)
    with d.council("c01", timeout=1) as c:
        c.send(b"\x0a" + bytes((1 << 20) + 4096))
        with pytest.raises(AckTimeout):
            c.recv_ack()
    assert item_count(d) == count0
    with d.council("c01", timeout=5) as c:
        probe = c.env("event")
        expect_ack(c.request(probe), ACCEPTED, msg_id=probe.msg_id, revision=1)
