"""The daemon's side of the systemd notify protocol, with a fake NOTIFY_SOCKET: the
conftest's Daemon binds an abstract unix datagram socket and points NOTIFY_SOCKET at it;
these tests add WATCHDOG_USEC and read what arrives, with arrival times.

systemd is not PID 1 on the test machines: that systemd acts on these messages (restarts a
unit whose pings stop, shows STATUS=) is checked only statically (tests/check-unit).
"""

import select
import signal
import time

import pytest

from coordlib import ACCEPTED, expect_ack

pytestmark = pytest.mark.local_only

WATCHDOG_USEC = 1_000_000


def read_for(d, seconds, until=None):
    """Notifications arriving within `seconds` (or until one satisfies `until`), as
    (monotonic time, {key: value}, text) tuples."""
    got = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        r, _, _ = select.select([d.notify], [], [], left)
        if not r:
            return got
        text = d.notify.recv(65536).decode()
        fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
        got.append((time.monotonic(), fields, text))
        if until and until(fields):
            return got


def test_ready_status_watchdog_reloading_stopping_in_order(coordd_factory):
    d = coordd_factory("notify", start=False)
    d.start(env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    ready = [m for m in d.notifications if "READY=1" in m.split("\n")]
    assert len(ready) == 1
    status = dict(line.split("=", 1) for line in ready[0].split("\n") if "=" in line)
    assert status["STATUS"].startswith("Serving: 0 council connections, 0 records stored")

    with d.council("c01") as c:
        expect_ack(c.request(c.env()), ACCEPTED)
        # Pings keep coming, every half interval, from the loop.
        pings = [t for t, f, _ in read_for(d, 3.2) if f.get("WATCHDOG") == "1"]
        assert len(pings) >= 5, pings
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

        d.proc.send_signal(signal.SIGHUP)
        reload = read_for(d, 10, until=lambda f: f.get("READY") == "1")
        keys = [k for _, f, _ in reload for k in f if k in ("RELOADING", "READY")]
        assert keys == ["RELOADING", "READY"], reload
        reloading = next(f for _, f, _ in reload if "RELOADING" in f)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        after = next(f for _, f, _ in reload if "READY" in f)
        assert "1 council connections, 1 records stored" in after["STATUS"], after

    d.proc.send_signal(signal.SIGTERM)
    rest = read_for(d, 10, until=lambda f: f.get("STOPPING") == "1")
    assert rest and rest[-1][1].get("STOPPING") == "1", rest
    assert d.wait_exit() == 0


def test_status_follows_changes(coordd_factory):
    d = coordd_factory("status")
    with d.council("c01") as c:
        expect_ack(c.request(c.env()), ACCEPTED)
        # Refreshed every 5 s, and sent only when the summary changed.
        got = read_for(d, 12, until=lambda f: "STATUS" in f)
    assert got, "no STATUS= after a change"
    status = got[-1][1]["STATUS"]
    assert status.startswith("Serving: 1 council connections, 1 records stored (seq 1), "
                             "last commit 20"), status
    assert "READY" not in got[-1][1]
    # The council left: one more update, then nothing while nothing changes.
    got = read_for(d, 12, until=lambda f: f.get("STATUS", "").startswith("Serving: 0 "))
    assert got and got[-1][1]["STATUS"].startswith("Serving: 0 council connections, 1 "), got
    assert not read_for(d, 6), "STATUS= repeated without a change"


def test_unread_notify_socket_does_not_stall(coordd_factory):
    """The notify socket's queue holds 10 datagrams (net.unix.max_dgram_qlen): a reader
    that stops reading must cost messages, not the broker's loop."""
    d = coordd_factory("unread")
    for _ in range(12):  # 24 notifications, none read
        d.proc.send_signal(signal.SIGHUP)
        with d.council("c01") as c:
            expect_ack(c.request(c.env()), ACCEPTED)
    assert d.stderr().count("Reloaded '") == 12
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_exit(timeout=20) == 0


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": str(WATCHDOG_USEC),
                                      "WATCHDOG_PID": "1"}],
                         ids=["no-watchdog", "watchdog-for-another-pid"])
def test_no_pings_without_a_watchdog_for_us(coordd_factory, env):
    d = coordd_factory("quiet", start=False)
    d.start(env=env)
    got = read_for(d, 1.5)
    assert not [f for _, f, _ in got if "WATCHDOG" in f], got
