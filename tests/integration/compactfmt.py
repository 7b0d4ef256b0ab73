"""The compact stored value of a digest aggregate (store schema 3), in Python, for the tests
that read or write the "digest" table behind the daemon's back and for the fuzz seeds.

The format is daemon/digest.c's (its top comment has it byte by byte; docs/ARCHITECTURE.md
"Storage"): u8 format 1; varint n_codes and per code a u8 length and its bytes, unique and
in byte order (the aggregate's dictionary); varint n_lines and per line, sorted by
(category, kind as int32): varint category, varint kind (its u32 bits), varint count, varint
sum, then for countries, languages and councils: varint n and n times varint gap and varint
count, the code being the dictionary entry at gap + 1 + the previous one's index. Varints are
LEB128.

A line here is (category, kind, count, sum, [countries, languages, councils]), each list of
(code, count) pairs; kind is signed (int32). encode_aggregate() makes the canonical bytes
that the daemon writes for the same aggregate, so encode_aggregate(decode_aggregate(v)) == v
for every value the daemon stored (test_backup.py checks that on real values).

Used by tests/integration (pytest puts this directory on sys.path) and by
tests/fuzz/make_corpus.py (which adds it), so the three cannot drift apart.
"""

FORMAT = 1


def varint(v):
    """The LEB128 bytes of the non-negative integer v."""
    if v < 0:
        raise ValueError(f"varint of a negative number {v}")
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def read_varint(b, i):
    """The varint at b[i]: (value, index after it). IndexError if b ends inside it."""
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def encode_aggregate(lines):
    """The stored value of an aggregate of these lines: bytes. Lines and lists may come in
    any order; they are written sorted, as the daemon writes them."""
    lines = sorted(lines, key=lambda line: (line[0], line[1]))
    codes = sorted({c.encode() for line in lines for lst in line[4] for c, _ in lst})
    index = {c: i for i, c in enumerate(codes)}
    out = bytearray([FORMAT]) + varint(len(codes))
    for c in codes:
        out += bytes([len(c)]) + c
    out += varint(len(lines))
    for category, kind, count, total, lists in lines:
        out += varint(category) + varint(kind & 0xFFFFFFFF) + varint(count) + varint(total)
        for lst in lists:
            out += varint(len(lst))
            nxt = 0
            for i, n in sorted((index[c.encode()], n) for c, n in lst):
                out += varint(i - nxt) + varint(n)
                nxt = i + 1
    return bytes(out)


def decode_aggregate(value):
    """The lines of a stored value, in its order. AssertionError if it is not the compact
    format or has bytes after the last line."""
    assert value[0] == FORMAT, "not the compact aggregate format"
    n_codes, i = read_varint(value, 1)
    codes = []
    for _ in range(n_codes):
        n = value[i]
        codes.append(value[i + 1:i + 1 + n].decode())
        i += 1 + n
    n_lines, i = read_varint(value, i)
    lines = []
    for _ in range(n_lines):
        fields = []
        for _ in range(4):
            v, i = read_varint(value, i)
            fields.append(v)
        category, kind, count, total = fields
        kind = kind - (1 << 32) if kind & 0x80000000 else kind
        lists = []
        for _ in range(3):
            n, i = read_varint(value, i)
            lst, nxt = [], 0
            for _ in range(n):
                gap, i = read_varint(value, i)
                code_count, i = read_varint(value, i)
                lst.append((codes[nxt + gap], code_count))
                nxt += gap + 1
            lists.append(lst)
        lines.append((category, kind, count, total, lists))
    assert i == len(value), "bytes after the last line"
    return lines
