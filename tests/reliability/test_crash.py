"""Crashes: the broker killed with SIGKILL again and again under load, clients killed
mid-import, the broker stopped (SIGSTOP) longer than the clients' ack timeouts, and a record
whose ack the kill swallowed. After each scenario the checker (checker.py) reads the store
back through the query socket: nothing acked lost, nothing stored twice, nothing altered,
nothing stored that no client sent, digests equal to a recount (docs/RELIABILITY.md).

Every wait is bounded; the moments of the kills are random (seeded, the seed is printed)
but each falls while records are being accepted: the test waits for the broker's
`accepted` counter to pass a random mark before killing it.
"""

import os
import random
import signal
import time

import pytest

import coordlib
from cluster import assert_clean
from relharness import ClientLog, scaled

pytestmark = pytest.mark.local_only

SEED = int(os.environ.get("COORD_REL_SEED", str(int(time.time()))))


def rng_for(name):
    print(f"{name}: COORD_REL_SEED={SEED}")
    return random.Random(f"{SEED}-{name}")


def wait_accepted(daemon, at_least, timeout=60.0):
    """Wait until the running broker's accepted counter (since its start) reaches
    `at_least`; returns it."""
    deadline = time.monotonic() + timeout
    with daemon.query(timeout=5) as q:
        while True:
            accepted = q.stats().accepted
            if accepted >= at_least:
                return accepted
            assert time.monotonic() < deadline, (
                f"the broker accepted only {accepted} records in {timeout} s, not {at_least}")
            time.sleep(0.01)


def test_broker_killed_20_times_under_load_from_11_councils(rel):
    rng = rng_for("kill20")
    c = rel(ack_timeout=1.0)
    c.council_workers(rate=scaled(150, 20), max_in_flight=32)
    imp = c.import_file("imp-c11", "c11", scaled(2000, 100))
    imp.start(timeout_s=120, max_in_flight=16)
    c.wait_flowing()
    for _ in range(20):
        wait_accepted(c.daemon, rng.randint(1, 300))
        c.crash()
        c.restart()
    wait_accepted(c.daemon, 100)
    summaries = c.stop_workers()
    status, result = imp.finish(180)
    assert status == 0 and result["waiting"] == 0, result
    rep = c.check()
    print(rep.line(), f"crashes {c.crashes}")
    assert c.crashes == 20
    assert_clean(rep)
    assert rep["in_doubt"] == 0, rep.line()
    # The clients really had to resend: each lost its connection 20 times.
    assert all(s["reconnects"] > 0 for s in summaries), summaries


def test_clients_killed_mid_import_and_mid_push_then_rerun(rel):
    rng = rng_for("clientkill")
    c = rel(ack_timeout=1.0)
    imps = [c.import_file(f"imp-{cc}", cc, scaled(3000, 200), seed=i)
            for i, cc in enumerate(("c03", "c04"))]
    pushers = ["c01", "c02", "c05"]
    for cc in pushers:
        c.worker(f"w-{cc}", councils=cc, rate=scaled(150, 20), max_in_flight=32)
    before = 0
    for _ in range(3):
        for imp in imps:
            imp.start(timeout_s=120, max_in_flight=16)
        before = wait_accepted(c.daemon, before + rng.randint(50, 400))
        for imp in imps:
            imp.kill9()
        for cc in pushers:
            w = c.workers[f"w-{cc}"][-1]
            assert w.kill9() == -signal.SIGKILL
            c.worker(f"w-{cc}", councils=cc, rate=scaled(150, 20), max_in_flight=32,
                     resume=True)
    for imp in imps:
        listing = imp.outbox_listing()
        assert listing["rejected"] == [], listing["rejected"]
        imp.start(timeout_s=120)
    for imp in imps:
        status, result = imp.finish(180)
        assert status == 0, result
        assert result["waiting"] == 0 and result["rejected"] == [], result
        assert result["accepted"] + result["duplicate"] == imp.n, result
        assert imp.outbox_listing()["waiting"] == []
    c.stop_workers()
    rep = c.check()
    print(rep.line())
    assert_clean(rep)
    # A resumed worker resent what its log showed unanswered: nothing is left in doubt.
    assert rep["in_doubt"] == 0, rep.line()


def test_broker_stopped_longer_than_the_ack_timeouts_then_continued(rel):
    c = rel(ack_timeout=1.0)
    c.council_workers(rate=scaled(150, 20), max_in_flight=32)
    imp = c.import_file("imp-c11", "c11", scaled(1500, 100))
    imp.start(timeout_s=120, max_in_flight=16)
    c.wait_flowing()
    wait_accepted(c.daemon, 300)
    os.kill(c.daemon.pid, signal.SIGSTOP)
    try:
        # Three ack timeouts: every client gives up on its connection and resends.
        time.sleep(3 * c.ack_timeout)
    finally:
        os.kill(c.daemon.pid, signal.SIGCONT)
    with c.daemon.query(timeout=5) as q:
        mark = q.stats().accepted
    wait_accepted(c.daemon, mark + 300)
    summaries = c.stop_workers()
    status, result = imp.finish(180)
    assert status == 0 and result["waiting"] == 0, result
    assert all(s["reconnects"] > 0 for s in summaries), summaries
    rep = c.check()
    print(rep.line(), f"reconnects {sum(s['reconnects'] for s in summaries)}, duplicate "
          f"answers {sum(s['duplicate'] for s in summaries)}")
    assert_clean(rep)


def test_record_sent_then_broker_killed_before_the_ack(rel):
    """The three ways an ack can be lost to a kill -9; each resend gets ACCEPTED or
    DUPLICATE and the store holds one copy."""
    rng = rng_for("beforeack")
    c = rel()
    d = c.daemon
    log = ClientLog(c.dir / "manual.log")
    log.generation(0)

    def send(council, env):
        data = env.SerializeToString()
        log.sent(env.council, env.msg_id, env.revision, data)
        council.send_keyed((env.msg_id, env.revision), data)

    def logged(ack, council_id):
        if ack.status in (coordlib.ACCEPTED, coordlib.DUPLICATE):
            log.acked(council_id, ack.msg_id, ack.revision,
                      "ACCEPTED" if ack.status == coordlib.ACCEPTED else "DUPLICATE", ack.seq)
        return ack

    # 1. Sent while the broker is stopped, so never read by it; then killed.
    env1 = coordlib.gen_event(council="c01")
    os.kill(d.pid, signal.SIGSTOP)
    with d.council("c01") as a:
        send(a, env1)
        c.crash()  # SIGKILL ends a stopped process too
        c.restart()
        with d.council("c01") as b:
            ack = logged(b.request(env1), "c01")
            assert ack.status in (coordlib.ACCEPTED, coordlib.DUPLICATE), coordlib.ack_str(ack)

    # 2. Stored and committed, its ack never read, then killed: the resend is DUPLICATE.
    env2 = coordlib.gen_event(council="c02")
    with d.council("c02") as a:
        send(a, env2)
        with d.query() as q:
            deadline = time.monotonic() + 20
            while not q.status("c02", env2.msg_id).found:
                assert time.monotonic() < deadline, "the record was never stored"
                time.sleep(0.01)
            seq2 = q.status("c02", env2.msg_id).seq
        c.crash()
    c.restart()
    with d.council("c02") as b:
        ack = logged(b.request(env2), "c02")
        coordlib.expect_ack(ack, coordlib.DUPLICATE, seq=seq2)

    # 3. Pipelined records, the broker killed after a random number of acks: every
    # unanswered one resent gets ACCEPTED (it was lost with the broker) or DUPLICATE (it
    # was committed, only its ack was lost).
    outcomes = {coordlib.ACCEPTED: 0, coordlib.DUPLICATE: 0}
    for rnd in range(scaled(10, 3)):
        cid = coordlib.COUNCIL_IDS[rnd % 11]
        envs = [coordlib.gen_envelope(coordlib.BODIES[i % 5], council=cid)
                for i in range(200)]
        with d.council(cid) as a:
            for env in envs:
                send(a, env)
            for ack in a.collect(rng.randint(0, 150)):
                logged(ack, cid)
            c.crash()
            for ack in a.drain(0.2):
                logged(ack, cid)
            answered = {k for k in a.acks}
        c.restart()
        with d.council(cid) as b:
            todo = [e for e in envs if (e.msg_id, e.revision) not in answered]
            for env in todo:
                b.send(env)
            for ack in b.collect(len(todo)):
                logged(ack, cid)
                assert ack.status in outcomes, coordlib.ack_str(ack)
                outcomes[ack.status] += 1
    log.close()
    with d.query() as q:
        from checker import check
        rep = check(q, [c.dir / "manual.log"])
    print(rep.line(), f"resends: {outcomes[coordlib.ACCEPTED]} ACCEPTED, "
          f"{outcomes[coordlib.DUPLICATE]} DUPLICATE")
    assert_clean(rep)
    assert rep["in_doubt"] == 0, rep.line()
