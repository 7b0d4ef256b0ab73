"""crashstate: rebuild files as a power cut would have left them, from the write log that
powercut.so (the LD_PRELOAD library beside this file) recorded.

Inputs: a snapshot of the traced directory taken before the traced program started, the
log, a cut point and a mode. The cut point `cut` is a record count: the power fails after
the first `cut` records of the log took effect and while record `cut` (if any) was in
progress. The disk then holds the snapshot, plus:

  durable writes   every WRITE before the cut that a later FLUSH of the same file, still
                   before the cut, covers (fsync/fdatasync cover the whole file; msync its
                   range, and only writes wholly inside it), every SYNCWRITE (O_DSYNC:
                   durable when its call returned; it makes nothing else durable), and
                   every TRUNCATE a later FLUSH of its file covers;

and, depending on the mode, some of the other writes before the cut (the unflushed ones):

  flushed  none of them: exactly what the program made durable.
  subset   each unflushed write (or truncate) independently with probability `p`.
  torn     as subset, and each kept unflushed write that spans a 512-byte sector boundary
           is torn with probability `p_tear`: only its bytes up to a random sector boundary
           inside it reach the disk. The write in progress at the cut (record `cut`) is
           included torn, or whole, or not at all.
  all      all of them: what a kill -9 at the cut leaves (the page cache survives).

Writes are applied in log order, so a later write wins where they overlap. A file that
first appears in the log (created by the program) exists in every state, empty but for
what is applied (directory entries are not modelled). lock.mdb is never traced nor
copied: LMDB rebuilds it. A HINT (sync_file_range) makes nothing durable.

Command line (see --help): build one state, or print a summary of a log.
"""

import argparse
import hashlib
import os
import random
import shutil
import struct
import sys

MAGIC = b"PCUTLOG1"
HEADER = struct.Struct("=IIQQQ")
OPEN, WRITE, SYNCWRITE, FLUSH, TRUNCATE, HINT, UNSUPPORTED = range(1, 8)
TYPE_NAMES = {OPEN: "open", WRITE: "write", SYNCWRITE: "syncwrite", FLUSH: "flush",
              TRUNCATE: "truncate", HINT: "hint", UNSUPPORTED: "unsupported"}
WHOLE = 0xFFFF_FFFF_FFFF_FFFF
SECTOR = 512
MODES = ("flushed", "subset", "torn", "all")
SKIPPED_FILES = {"lock.mdb"}


class LogError(ValueError):
    pass


class Record:
    __slots__ = ("type", "file", "off", "len", "t_ns", "data")

    def __init__(self, type_, file, off, length, t_ns, data):
        self.type, self.file, self.off, self.len, self.t_ns, self.data = (
            type_, file, off, length, t_ns, data)

    def __repr__(self):
        return (f"Record({TYPE_NAMES.get(self.type, self.type)}, file={self.file}, "
                f"off={self.off}, len={self.len})")


class Log:
    """A parsed write log. `records` excludes OPEN records (`files` maps their ids to
    paths); a record cut short at the end (the program was killed while logging) is
    dropped and counted in `truncated_tail`."""

    def __init__(self, path):
        with open(path, "rb") as f:
            buf = f.read()
        if buf[:8] != MAGIC:
            raise LogError(f"{path}: not a powercut log (magic {buf[:8]!r})")
        self.buf = memoryview(buf)
        self.files = {}
        self.records = []
        self.truncated_tail = False
        pos = 8
        n = len(buf)
        while pos < n:
            if pos + HEADER.size > n:
                self.truncated_tail = True
                break
            type_, file, off, length, t_ns = HEADER.unpack_from(buf, pos)
            pos += HEADER.size
            has_payload = type_ in (OPEN, WRITE, SYNCWRITE, UNSUPPORTED)
            if has_payload and pos + length > n:
                self.truncated_tail = True
                break
            data = self.buf[pos:pos + length] if has_payload else None
            if has_payload:
                pos += length
            if type_ == OPEN:
                self.files[file] = bytes(data).decode()
            elif type_ == UNSUPPORTED:
                raise LogError(f"{path}: the program did something the log cannot "
                               f"represent, on {self.files.get(file)}: {bytes(data).decode()}")
            elif type_ in TYPE_NAMES:
                self.records.append(Record(type_, file, off, length, t_ns, data))
            else:
                raise LogError(f"{path}: unknown record type {type_} at byte {pos}")

    def __len__(self):
        return len(self.records)

    def durable(self, cut):
        """Indices of the records before `cut` that are durable at a power cut there."""
        out = set()
        whole = set()   # files with a full flush later (before the cut)
        ranges = {}     # file -> [(from, to)] of range flushes later
        for i in range(min(cut, len(self.records)) - 1, -1, -1):
            r = self.records[i]
            if r.type == FLUSH:
                if r.len == WHOLE:
                    whole.add(r.file)
                else:
                    ranges.setdefault(r.file, []).append((r.off, r.off + r.len))
            elif r.type == SYNCWRITE:
                out.add(i)
            elif r.type in (WRITE, TRUNCATE):
                if r.file in whole:
                    out.add(i)
                elif r.type == WRITE and any(a <= r.off and r.off + r.len <= b
                                             for a, b in ranges.get(r.file, ())):
                    out.add(i)
        return out

    def summary(self):
        counts = {}
        for r in self.records:
            counts[TYPE_NAMES[r.type]] = counts.get(TYPE_NAMES[r.type], 0) + 1
        written = sum(r.len for r in self.records if r.type in (WRITE, SYNCWRITE))
        return {"records": len(self.records), "files": dict(self.files), "counts": counts,
                "bytes_written": written, "truncated_tail": self.truncated_tail}


def _tear(r, rng):
    """A torn version of write `r`: its bytes up to a random sector boundary strictly
    inside it, or None when it spans no boundary (a sector is written whole or not)."""
    first = (r.off // SECTOR + 1) * SECTOR
    end = r.off + r.len
    if first >= end:
        return None
    boundary = rng.randrange(first, end, SECTOR)
    return boundary - r.off


def plan(log, cut, mode, rng, p=0.5, p_tear=0.3):
    """The operations a crash state at `cut` applies, in order: (record, nbytes) with
    nbytes the length applied (a torn write applies a prefix). Also returns a description:
    counts of durable, kept unflushed, dropped and torn writes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    cut = min(cut, len(log.records))
    durable = log.durable(cut)
    ops = []
    info = {"cut": cut, "mode": mode, "durable": 0, "kept": 0, "dropped": 0, "torn": 0}
    for i in range(cut):
        r = log.records[i]
        if r.type not in (WRITE, SYNCWRITE, TRUNCATE):
            continue
        if i in durable:
            ops.append((r, r.len))
            info["durable"] += 1
            continue
        if mode == "flushed" or (mode in ("subset", "torn") and rng.random() >= p):
            info["dropped"] += 1
            continue
        n = r.len
        if mode == "torn" and r.type != TRUNCATE and rng.random() < p_tear:
            t = _tear(r, rng)
            if t is not None:
                n = t
                info["torn"] += 1
        ops.append((r, n))
        info["kept"] += 1
    if mode == "torn" and cut < len(log.records):
        r = log.records[cut]
        if r.type in (WRITE, SYNCWRITE):
            roll = rng.random()
            t = _tear(r, rng) if roll < 0.5 else None
            if t is not None:
                ops.append((r, t))
                info["torn"] += 1
                info["in_flight"] = "torn"
            elif roll < 0.75:
                ops.append((r, r.len))
                info["in_flight"] = "whole"
            else:
                info["in_flight"] = "lost"
    return ops, info


def build(log, snapshot_dir, out_dir, cut, mode, rng, p=0.5, p_tear=0.3):
    """Write the crash state into `out_dir` (must not exist). Returns (info, digest):
    what plan() said and a SHA-256 over the files (to tell identical states apart)."""
    os.makedirs(out_dir)
    if snapshot_dir and os.path.isdir(snapshot_dir):
        for name in sorted(os.listdir(snapshot_dir)):
            src = os.path.join(snapshot_dir, name)
            if name in SKIPPED_FILES or not os.path.isfile(src):
                continue
            shutil.copyfile(src, os.path.join(out_dir, name))
    for rel in log.files.values():
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "wb").close()
    ops, info = plan(log, cut, mode, rng, p, p_tear)
    handles = {}
    try:
        for fid, rel in log.files.items():
            handles[fid] = open(os.path.join(out_dir, rel), "r+b")
        for r, n in ops:
            f = handles[r.file]
            if r.type == TRUNCATE:
                f.truncate(r.off)
            else:
                f.seek(r.off)
                f.write(r.data[:n])
    finally:
        for f in handles.values():
            f.close()
    h = hashlib.sha256()
    for name in sorted(os.listdir(out_dir)):
        h.update(name.encode() + b"\0")
        with open(os.path.join(out_dir, name), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return info, h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Rebuild the traced files as a power cut at a point of a powercut log "
                    "would have left them, or summarise a log.",
        epilog="Modes: flushed (only what was made durable), subset (plus each unflushed "
               "write with probability P), torn (subset, plus torn writes at 512-byte "
               "sector boundaries), all (every write before the cut: a kill -9).")
    ap.add_argument("--log", required=True, help="the log written by powercut.so")
    ap.add_argument("--snapshot", help="the traced directory as it was before the run")
    ap.add_argument("--out", help="directory to create with the crash state")
    ap.add_argument("--cut", default="end",
                    help="records that took effect before the power cut, or 'end' "
                         "(default)")
    ap.add_argument("--mode", choices=MODES, default="flushed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p", type=float, default=0.5,
                    help="probability that an unflushed write survives (subset, torn)")
    ap.add_argument("--p-tear", type=float, default=0.3,
                    help="probability that a surviving unflushed write is torn (torn)")
    ap.add_argument("--summary", action="store_true", help="print what the log holds")
    args = ap.parse_args(argv)
    try:
        log = Log(args.log)
    except (OSError, LogError) as e:
        print(f"crashstate: {e}", file=sys.stderr)
        return 2
    if args.summary:
        for k, v in log.summary().items():
            print(f"{k}: {v}")
        return 0
    if not args.out:
        ap.error("--out is required unless --summary")
    try:
        cut = len(log) if args.cut == "end" else int(args.cut)
    except ValueError:
        ap.error(f"--cut must be a number or 'end', not {args.cut!r}")
    if not 0 <= cut <= len(log):
        ap.error(f"--cut must be between 0 and {len(log)}")
    try:
        info, digest = build(log, args.snapshot, args.out, cut, args.mode,
                             random.Random(args.seed), args.p, args.p_tear)
    except OSError as e:
        print(f"crashstate: {e}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in info.items()) + f" sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
