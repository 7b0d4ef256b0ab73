"""relworker: a council client process for the reliability harness (docs/RELIABILITY.md).

Runs one or more connections (coordclient.Client, the project's Python client: pipelined,
matches acks by (msg_id, revision), resends an unanswered record after --ack-timeout on a
fresh connection and a RETRY_LATER after a backoff) and logs every record it sends and every
final answer to an append-only ClientLog (relharness.py) before counting it.

The Python client keeps its queue in memory; the log makes this process durable on top of
it: with --resume, the records the log shows as sent and never answered are pushed again
first (same bytes), so a worker killed with SIGKILL and started again resends like
coord-push's outbox does.

Prints "STARTED" once SIGTERM is handled, and "FLOWING" at its first final answer (the
tests wait for it before they break things, so each worker has connected and is under
way).

Stops generating on SIGTERM or SIGINT (or after --records per connection), then waits for
every answer (at most --drain-timeout seconds). With --hold it then keeps its connections
open until the next SIGTERM. Prints "DONE <json>" when every record is answered and a
final "SUMMARY <json>" line. Exit status: 0 every record ACCEPTED or DUPLICATE, 1 one was
REJECTED, 3 answers still missing at --drain-timeout, 2 bad usage.
"""

import signal
import sys

stop_requested = False


def _on_signal(signum, frame):
    global stop_requested
    stop_requested = True


# Before the slow imports: a SIGTERM from now on stops the worker cleanly. "STARTED" tells
# the harness so (cluster.WorkerProc.terminate waits for it).
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relharness  # noqa: E402,F401  (sets up the import paths)
from relharness import FINAL_NAMES, ClientLog, LogContents, RecordGen  # noqa: E402

import coordclient  # noqa: E402
import zmq  # noqa: E402

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="relworker.py", description="A council client process of the reliability "
        "harness: pushes generated records over N connections and logs what it sent and "
        "what was acknowledged.")
    p.add_argument("--endpoint", required=True, help="the broker's ingest endpoint")
    p.add_argument("--log", required=True, help="this client's append-only log file")
    p.add_argument("--name", required=True, help="a name unique among the clients (msg_ids)")
    p.add_argument("--councils", default="c01", help="comma-separated council ids; "
                   "connection i sends for council i modulo their number")
    p.add_argument("--connections", type=int, default=1, help="connections (default 1)")
    p.add_argument("--records", type=int, default=0,
                   help="records per connection, then stop (0: until SIGTERM)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="new records per second for the whole process (0: as fast as acked)")
    p.add_argument("--max-in-flight", type=int, default=64, help="per connection (64)")
    p.add_argument("--ack-timeout", type=float, default=2.0,
                   help="seconds before an unanswered record is resent on a new connection")
    p.add_argument("--backoff-max", type=float, default=1.0,
                   help="longest RETRY_LATER backoff and reconnect delay, seconds (1)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for the last answers after stopping (120)")
    p.add_argument("--resume", action="store_true",
                   help="first resend what the log shows as sent and never answered")
    p.add_argument("--hold", action="store_true",
                   help="when everything is answered, keep the connections open until "
                   "SIGTERM")
    p.add_argument("--seed", type=int, default=1915, help="record generator seed")
    args = p.parse_args(argv)
    if args.connections < 1 or args.max_in_flight < 1 or args.ack_timeout <= 0:
        p.error("--connections, --max-in-flight and --ack-timeout must be positive")
    return args


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Worker:
    def __init__(self, args):
        self.args = args
        self.councils = [c for c in args.councils.split(",") if c]
        self.log = ClientLog(args.log)
        previous = LogContents().read(args.log) if os.path.exists(args.log) else LogContents()
        self.generation = previous.generations
        self.log.generation(self.generation)
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 2 * args.connections + 64)
        self.clients = []
        for i in range(args.connections):
            council = self.councils[i % len(self.councils)]
            c = coordclient.Client(args.endpoint, council, max_in_flight=args.max_in_flight,
                                   ack_timeout=args.ack_timeout, backoff_min=0.05,
                                   backoff_max=args.backoff_max, ctx=self.ctx,
                                   on_ack=self._on_ack_for(council))
            self.clients.append(c)
        self.gens = [RecordGen(c.council, f"{args.name}-g{self.generation}-k{i}",
                               args.seed + 7919 * i + 104729 * self.generation)
                     for i, c in enumerate(self.clients)]
        self.made = [0] * len(self.clients)
        self.counts = dict(sent=0, resent=0, accepted=0, duplicate=0, rejected=0,
                           retry_later=0)
        self.rejections = []
        self.flowing = False  # a first final answer arrived
        self.started = time.monotonic()
        self.next_client = 0
        if args.resume:
            self._resend(previous)

    def _on_ack_for(self, council):
        def on_ack(ack):
            name = FINAL_NAMES.get(ack.status)
            if name is None:
                self.counts["retry_later"] += 1
                return
            self.log.acked(council, ack.msg_id, ack.revision, name, ack.seq)
            self.counts[name.lower()] += 1
            if not self.flowing:
                self.flowing = True
                print("FLOWING", flush=True)
            if name == "REJECTED" and len(self.rejections) < 10:
                self.rejections.append(f"{council}/{ack.msg_id}/{ack.revision}: "
                                       f"{coordclient.reason_name(ack.reason)}: {ack.message}")
        return on_ack

    def _client_for(self, council, msg_id):
        """The connection that sends a resent record: all revisions of one record go
        through one connection, which keeps them in order."""
        mine = [c for c in self.clients if c.council == council]
        if not mine:
            raise SystemExit(f"relworker: the log holds council {council!r}, not in "
                             f"--councils {self.args.councils}")
        return mine[hash(msg_id) % len(mine)]

    def _resend(self, previous):
        for key in previous.unanswered():
            council, msg_id, revision = key
            data = sorted(previous.sent[key])[0]
            client = self._client_for(council, msg_id)
            client.push(((msg_id, revision), data), timeout=0)
            self.counts["resent"] += 1

    def _generate(self):
        """Queue new records while connections have room and the rate allows."""
        args = self.args
        budget = 256
        if args.rate > 0:
            allowed = int(args.rate * (time.monotonic() - self.started)) - self.counts["sent"]
            budget = min(budget, allowed)
        n = len(self.clients)
        tried = 0
        while budget > 0 and tried < n:
            i = self.next_client
            c = self.clients[i]
            if (args.records and self.made[i] >= args.records) or \
                    c.waiting >= args.max_in_flight:
                self.next_client = (i + 1) % n
                tried += 1
                continue
            for env in self.gens[i].next_record():
                data = env.SerializeToString()
                self.log.sent(env.council, env.msg_id, env.revision, data)
                c.push(((env.msg_id, env.revision), data), timeout=0)
                self.counts["sent"] += 1
            self.made[i] += 1
            budget -= 1
            self.next_client = (i + 1) % n
            tried = 0

    def generating(self):
        if stop_requested:
            return False
        if self.args.records:
            return any(m < self.args.records for m in self.made)
        return True

    def waiting(self):
        return sum(c.waiting for c in self.clients)

    def pump(self, timeout):
        poller = zmq.Poller()
        for c in self.clients:
            poller.register(c.sock, zmq.POLLIN)
        poller.poll(int(timeout * 1000))
        for c in self.clients:
            c.poll(0)

    def summary(self):
        out = dict(self.counts)
        out.update(name=self.args.name, generation=self.generation,
                   waiting=self.waiting(), reconnects=sum(c.reconnects for c in self.clients),
                   seconds=round(time.monotonic() - self.started, 3),
                   rejections=self.rejections)
        return out

    def run(self):
        while self.generating():
            self._generate()
            self.pump(0.02)
        deadline = time.monotonic() + self.args.drain_timeout
        while self.waiting() and time.monotonic() < deadline:
            self.pump(0.05)
        if self.waiting():
            return 3
        print("DONE " + json.dumps(self.summary()), flush=True)
        if self.args.hold:
            # Until SIGTERM (at once if one came already).
            while not stop_requested:
                self.pump(0.1)
        return 1 if self.counts["rejected"] else 0

    def close(self):
        for c in self.clients:
            c.close()
        self.ctx.term()
        self.log.close()


def main(argv):
    args = parse_args(argv)
    print("STARTED", flush=True)
    raise_nofile()
    w = Worker(args)
    try:
        status = w.run()
    finally:
        # A late SIGTERM must not kill the process while Python shuts down (it restores
        # the default handler then).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("SUMMARY " + json.dumps(w.summary()), flush=True)
        w.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
