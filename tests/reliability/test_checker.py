"""The checker itself: it must see a lost, an altered, a phantom and a misacknowledged
record when the logs say so (a checker that cannot fail proves nothing), and pass a clean
run of the worker processes."""

import pytest

import coordlib
from checker import check
from cluster import assert_clean
from relharness import ClientLog, LogContents

pytestmark = pytest.mark.local_only


def test_checker_counts_each_kind_of_fault(rel):
    c = rel()
    d = c.daemon
    log = ClientLog(c.dir / "faults.log")
    log.generation(0)
    good, stored_altered, phantom, misacked = (coordlib.gen_event(council="c01")
                                               for _ in range(4))
    with d.council("c01") as cl:
        for env in (good, stored_altered, phantom, misacked):
            coordlib.expect_ack(cl.request(env), coordlib.ACCEPTED)
        seqs = {env.msg_id: cl.acks_for((env.msg_id, 1))[0].seq
                for env in (good, stored_altered, phantom, misacked)}
    # good: logged as it was sent and acked.
    log.sent("c01", good.msg_id, 1, good.SerializeToString())
    log.acked("c01", good.msg_id, 1, "ACCEPTED", seqs[good.msg_id])
    # altered: the log holds other bytes than the store.
    other = coordlib.gen_event(council="c01", msg_id=stored_altered.msg_id, title="Other")
    log.sent("c01", stored_altered.msg_id, 1, other.SerializeToString())
    log.acked("c01", stored_altered.msg_id, 1, "ACCEPTED", seqs[stored_altered.msg_id])
    # phantom: stored, never logged as sent.
    # misacked: an ACCEPTED answer with another seq.
    log.sent("c01", misacked.msg_id, 1, misacked.SerializeToString())
    log.acked("c01", misacked.msg_id, 1, "ACCEPTED", seqs[misacked.msg_id] + 100)
    # lost: logged as acked, never stored.
    lost = coordlib.gen_event(council="c02")
    log.sent("c02", lost.msg_id, 1, lost.SerializeToString())
    log.acked("c02", lost.msg_id, 1, "DUPLICATE", 1)
    # in doubt: sent, never answered, not stored (allowed).
    doubt = coordlib.gen_event(council="c03")
    log.sent("c03", doubt.msg_id, 1, doubt.SerializeToString())
    log.close()
    with open(c.dir / "faults.log", "ab") as f:
        f.write(b"S c01 cut-short")  # a line a kill -9 cut: ignored
    with d.query() as q:
        rep = check(q, [c.dir / "faults.log"])
    print(rep.line())
    assert (rep["lost"], rep["altered"], rep["phantom"], rep["misacked"]) == (1, 1, 1, 1), (
        rep.line() + "\n" + rep.details())
    assert rep["duplicated"] == 0 and rep["gaps"] == 0 and rep["digests_differ"] == 0
    assert (rep["in_doubt"], rep["in_doubt_stored"]) == (1, 0)
    assert rep["bad_log_lines"] == 0
    assert not rep.ok()


def test_log_lines_cut_by_a_kill_count_as_never_written(tmp_path):
    path = tmp_path / "cut.log"
    log = ClientLog(path)
    log.generation(0)
    log.sent("c01", "m-1", 1, b"\x0a\x03c01")
    log.close()
    with open(path, "ab") as f:
        f.write(b"A c01 m-1 1 ACCEP")
    got = LogContents().read(path)
    assert got.final == {} and list(got.sent) == [("c01", "m-1", 1)]
    assert got.unanswered() == [("c01", "m-1", 1)]


def test_clean_run_of_three_workers_passes(rel):
    c = rel()
    for cc in ("c01", "c06", "c11"):
        c.worker(f"w-{cc}", councils=cc, records=300, max_in_flight=32)
    summaries = c.finish_workers()
    assert sum(s["accepted"] + s["duplicate"] for s in summaries) >= 900
    rep = c.check()
    print(rep.line())
    assert_clean(rep)
    assert rep["in_doubt"] == 0 and rep["acked"] == rep["sent"] == rep["items"]
