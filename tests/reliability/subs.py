"""subs: subscribers on the publish socket for the reliability tests and the soak: the
exact one (the Clone pattern of docs/PROTOCOL.md for items) and the ones that come and go.
"""

import time

import coordlib


class ExactItems:
    """The Clone pattern for items: subscribed to every item topic, so the seqs it sees
    must follow one another; a seq that does not, or a topic's prev_seq that is not the
    last seq seen on that topic, is a gap, repaired from history."""

    def __init__(self, daemon, rcvhwm=1000):
        self.sub = daemon.subscriber("item/", rcvhwm=rcvhwm)
        self.endpoint = daemon.query_endpoint
        self.query = daemon.query(timeout=5)
        self.items = {}  # seq -> Item bytes
        self.held = 0
        self.topic_last = {}
        self.gaps = 0
        self.prev_seq_gaps = 0
        self.catch_ups = 0
        self.live_applied = 0
        self.skipped = 0

    def close(self):
        self.sub.close()
        self.query.close()

    def catch_up(self, attempts=10):
        """Apply every stored item after the last one held. A broker killed meanwhile
        loses the request: ask again on a fresh connection."""
        self.catch_ups += 1
        for attempt in range(attempts):
            try:
                items, _pages = self.query.history_all(self.held)
                break
            except coordlib.QueryTimeout:
                if attempt == attempts - 1:
                    raise
                self.query.close()
                self.query = coordlib.Query(self.endpoint, timeout=5)
        for it in items:
            assert it.seq == self.held + 1, f"history skipped from {self.held} to {it.seq}"
            self.items[it.seq] = it.SerializeToString()
            self.held = it.seq

    def on_publication(self, topic, pub):
        item = pub.item
        last = self.topic_last.get(topic)
        if last is not None and pub.prev_seq != last:
            self.prev_seq_gaps += 1
        self.topic_last[topic] = pub.last_seq
        if item.seq <= self.held:
            self.skipped += 1
            return
        if item.seq != self.held + 1:
            self.gaps += 1
            self.catch_up()
            if item.seq <= self.held:
                self.skipped += 1
                return
        self.items[item.seq] = item.SerializeToString()
        self.held = item.seq
        self.live_applied += 1

    def read_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                topic, pub = self.sub.recv(0.05)
            except coordlib.PublicationTimeout:
                continue
            self.on_publication(topic, pub)


def churn(daemon, stop, counts, key, pause_s, read, rcvhwm=1000):
    """Connect, subscribe to everything, maybe read a little, vanish; until `stop` (at
    most 100,000 times). Counts the rounds in counts[key]."""
    while not stop.is_set() and counts[key] < 100_000:
        with daemon.subscriber("", rcvhwm=rcvhwm) as s:
            if read:
                for _ in range(3):
                    if not s.sock.poll(int(pause_s * 1000)):
                        break
                    s.sock.recv_multipart()
            else:
                time.sleep(pause_s)
        counts[key] += 1
