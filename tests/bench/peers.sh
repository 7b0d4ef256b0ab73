#!/bin/sh
# peers.sh: coordd beside Redis Streams, NATS JetStream and a RabbitMQ quorum queue, the
# same load in one run.
# See usage() below, and docs/BENCHMARKS.md.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
coordd=$repo/build/daemon/coordd
bench=$repo/build/tests/bench/coord-bench
transport=--tcp
smoke=0
json=0
no_rabbitmq=0
runs=1
READY_TRIES=300 # x 0.1 s: how long a peer may take to come up
RABBIT_READY_TRIES=1800 # RabbitMQ boots Erlang: 10 to 30 s on two busy cores
RABBIT=/usr/lib/rabbitmq/bin/rabbitmq-server # not /usr/sbin's, which runs as user rabbitmq
STOP_TRIES=100  # x 0.1 s: how long it may take to stop before it is killed
SMOKE_ARGS="--councils 4 --messages 300 --window 16 --ceiling --json --quiet"

usage() {
	cat <<EOF
Usage: tests/bench/peers.sh [OPTION]... [-- COORD-BENCH ARGS...]
Run coord-bench's load against coordd, both ceilings, Redis Streams, NATS JetStream and a
RabbitMQ quorum queue in ONE run, so the ratios are within a run, and print the table of
docs/BENCHMARKS.md.

Each peer that is installed is started on a free loopback port with a fresh directory
under /tmp (never the system service) and stopped at the end:
  redis-server --appendonly yes --appendfsync always   (apt-get install redis-server)
  nats-server -js -sd DIR                               (apt-get install nats-server)
  rabbitmq-server, its own node name, ports, epmd and   (apt-get install rabbitmq-server)
    directories, schedulers that do not busy-wait;
    a quorum queue, publisher confirms
A peer that is not installed, or that coord-bench was built without (libhiredis-dev,
libnats-dev, librabbitmq-dev, then reconfigure the build), is skipped with a message;
--no-rabbitmq skips RabbitMQ (it takes 10 to 30 s to start). coordd is started by
run-bench. The arguments after -- go to coord-bench (default: --ceiling, 11 councils,
10,000 messages each, 64 in flight, 300 bytes); e.g. -- --ceiling -w 1 -m 1000.

  --coordd BIN    the broker (default build/daemon/coordd)
  --bench BIN     coord-bench (default build/tests/bench/coord-bench)
  --ipc           coordd and the ceilings on ipc:// (default: tcp://127.0.0.1, like the peers)
  --json          print coord-bench's JSON report instead of the table
  --no-rabbitmq   do not start RabbitMQ
  --runs N        N runs (each a fresh coordd) against the same peers, 1 to 99 (default 1)
  --smoke         a few hundred messages per phase, checked: every message acked and
                  sane figures (the meson test bench-peers); exit 77 (skipped) when no
                  peer can run
  -h, --help      this help

Exit status: coord-bench's (see coord-bench --help), 4 when a peer did not start, 5 when
a --smoke check failed, 77 with --smoke and no peer.
EOF
}

while [ $# -gt 0 ]; do
	case $1 in
	--coordd) coordd=${2:?--coordd needs a path}; shift ;;
	--bench) bench=${2:?--bench needs a path}; shift ;;
	--ipc) transport= ;;
	--json) json=1 ;;
	--smoke) smoke=1 ;;
	--no-rabbitmq) no_rabbitmq=1 ;;
	--runs)
		runs=${2:?--runs needs a count}
		case $runs in
		[1-9] | [1-9][0-9]) ;;
		*) echo "peers.sh: --runs takes 1 to 99" >&2; exit 2 ;;
		esac
		shift
		;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) echo "peers.sh: unknown option '$1'. Try 'tests/bench/peers.sh --help'." >&2; exit 2 ;;
	esac
	shift
done

if [ ! -x "$bench" ] || [ ! -x "$coordd" ]; then
	echo "peers.sh: build first: no $bench or $coordd" >&2
	exit 2
fi

free_port() {
	/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tmp=$(mktemp -d /tmp/coord-peers-XXXXXX) || exit 2
pids=""
epmd_port=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	for pid in $pids; do
		kill -TERM "$pid" 2>/dev/null
		n=0
		while kill -0 "$pid" 2>/dev/null && [ "$n" -lt "$STOP_TRIES" ]; do
			sleep 0.1
			n=$((n + 1))
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	# RabbitMQ's Erlang started an epmd of its own, on its own port.
	[ -n "$epmd_port" ] && ERL_EPMD_PORT=$epmd_port epmd -kill >/dev/null 2>&1
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for PID LOGFILE TEXT [TRIES]: until the log says TEXT; 1 when the server died or took
# too long.
wait_for() {
	n=0
	while [ $n -lt "${4:-$READY_TRIES}" ]; do
		kill -0 "$1" 2>/dev/null || return 1
		grep -q "$3" "$2" 2>/dev/null && return 0
		sleep 0.1
		n=$((n + 1))
	done
	return 1
}

# started SERVER LOG LINE [TRIES], right after starting SERVER in the background: sets
# $pid, stops it with the others at the end, and waits for LINE in LOG (exit 4 if not).
started() {
	pid=$!
	pids="$pids $pid"
	if ! wait_for "$pid" "$2" "$3" "${4:-}"; then
		echo "peers.sh: $1 did not start:" >&2
		tail -5 "$2" >&2
		exit 4
	fi
}

built=$("$bench" --help | sed -n 's/.*(built in: *\(.*\))$/\1/p')
peer_args=""
peers=""

# have NAME SERVER-BINARY PACKAGE LIBRARY-PACKAGE: may the peer run?
have() {
	if ! command -v "$2" >/dev/null 2>&1; then
		echo "peers.sh: $2 is not installed (apt-get install $3): skipping $1" >&2
		return 1
	fi
	case " $built " in
	*" $1 "*) return 0 ;;
	esac
	echo "peers.sh: coord-bench was built without the $1 phase (apt-get install $4," \
		"then reconfigure the build): skipping $1" >&2
	return 1
}

if have redis redis-server redis-server libhiredis-dev; then
	port=$(free_port)
	mkdir -p "$tmp/redis"
	redis-server --bind 127.0.0.1 --port "$port" --dir "$tmp/redis" --appendonly yes \
		--appendfsync always --save '' --daemonize no --logfile "$tmp/redis.log" \
		</dev/null >/dev/null 2>&1 &
	started redis-server "$tmp/redis.log" "Ready to accept connections"
	peer_args="$peer_args --peer redis=127.0.0.1:$port,pid=$pid"
	peers="$peers redis"
fi

if have nats nats-server nats-server libnats-dev; then
	port=$(free_port)
	nats-server -a 127.0.0.1 -p "$port" -js -sd "$tmp/nats" -l "$tmp/nats.log" \
		</dev/null >/dev/null 2>&1 &
	started nats-server "$tmp/nats.log" "Server is ready"
	peer_args="$peer_args --peer nats=127.0.0.1:$port,pid=$pid"
	peers="$peers nats"
fi

if [ $no_rabbitmq = 0 ] && have rabbitmq "$RABBIT" rabbitmq-server librabbitmq-dev; then
	port=$(free_port)
	epmd_port=$(free_port)
	r=$tmp/rabbitmq
	mkdir -p "$r"
	echo '[].' >"$r/enabled_plugins"
	env HOME="$r" RABBITMQ_NODENAME="coordbench$port@localhost" \
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" \
		RABBITMQ_DIST_PORT="$(free_port)" ERL_EPMD_PORT="$epmd_port" \
		RABBITMQ_MNESIA_BASE="$r/mnesia" RABBITMQ_LOG_BASE="$r/log" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$r/enabled_plugins" \
		RABBITMQ_CONFIG_FILE="$r/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$r/advanced.config" \
		RABBITMQ_CONF_ENV_FILE="$r/rabbitmq-env.conf" \
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
		"$RABBIT" </dev/null >"$tmp/rabbitmq.log" 2>&1 &
	started rabbitmq-server "$tmp/rabbitmq.log" "Starting broker... completed" $RABBIT_READY_TRIES
	# The script waits for the Erlang VM, its child: that one's CPU time is the broker's.
	beam=$(pgrep -P "$pid" -x beam.smp | head -1)
	peer_args="$peer_args --peer rabbitmq=127.0.0.1:$port${beam:+,pid=$beam}"
	peers="$peers rabbitmq"
fi

if [ $smoke = 1 ]; then
	if [ -z "$peers" ]; then
		echo "peers.sh: --smoke: no peer can run; skipped" >&2
		exit 77
	fi
	# shellcheck disable=SC2086
	set -- $SMOKE_ARGS "$@"
elif [ $# -eq 0 ]; then
	set -- --ceiling
fi

# report.py REPORT SMOKE LOAD PEERS: the table of one run, and the --smoke checks.
cat >"$tmp/report.py" <<'EOF'
import json, sys

path, smoke, load, peers = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4].split()
try:
    with open(path) as f:
        report = json.loads(f.readline())
except (OSError, ValueError):
    print("peers.sh: coord-bench printed no report", file=sys.stderr)
    sys.exit(1)

FSYNC = {"ceiling-echo": "— (no storage)", "ceiling-lmdb": "yes", "coordd": "yes (sync = full)",
         "redis": "yes (appendfsync always)",
         "nats": "no (JetStream syncs its files every 2 min)",
         "rabbitmq": "yes (quorum queue: fsync before the confirm)"}
SYSTEM = {"ceiling-echo": "raw ZeroMQ DEALER→ROUTER echo",
          "ceiling-lmdb": "bare ROUTER + LMDB group commit + ack",
          "coordd": "coordd", "redis": "Redis 7 Streams XADD",
          "nats": "NATS 2.9 JetStream, file store",
          "rabbitmq": "RabbitMQ 3.10 quorum queue, publisher confirms"}
phases = report.get("phases", {})
w = report["window"]
print(f"{report['councils']} councils x {report['messages']} messages, {w} in flight, "
      f"~{report['size']}-byte Envelopes; load average before the run {load}")
print()
print("| system | in flight per client | acked msgs/s | p50 / p99 / p99.9 ack latency | "
      "server CPU | ack after fsync? |")
print("|---|---|---|---|---|---|")
for name, p in phases.items():
    cpu = f"{p['server_cpu_seconds']:.2f} s" if p["server_cpu_seconds"] >= 0 else "?"
    print(f"| {SYSTEM.get(name, name)} | {w} | {p['acked_per_second']:,.0f} | "
          f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} / {p['p999_ms']:.2f} ms | {cpu} | "
          f"{FSYNC.get(name, '?')} |")
print()
ratios = [(k[len("ratio_to_"):], v) for k, v in report.items() if k.startswith("ratio_to_")]
print("coordd's throughput over: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios))

if smoke:
    bad = []
    for name in ["coordd", "ceiling-echo", "ceiling-lmdb"] + peers:
        p = phases.get(name)
        if p is None:
            bad.append(f"phase {name} missing")
            continue
        if not (p["total"] > 0 and p["acked"] == p["total"] == p["accepted"] and p["error"] == 0):
            bad.append(f"{name}: acked {p['acked']} accepted {p['accepted']} of {p['total']}")
        if not (p["acked_per_second"] > 0 and 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]):
            bad.append(f"{name}: throughput/latency not sane: {p}")
        if name in peers and not p["server_cpu_seconds"] >= 0:
            bad.append(f"{name}: server CPU time not read")
        if name in peers and not 0 < report.get(f"ratio_to_{name}", 0) < 1000:
            bad.append(f"ratio to {name}: {report.get(f'ratio_to_{name}')}")
    for b in bad:
        print(f"peers.sh: --smoke: {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)
EOF

status=0
i=0
while [ $i -lt "$runs" ]; do
	i=$((i + 1))
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	# shellcheck disable=SC2086
	"$repo/tests/bench/run-bench" --coordd "$coordd" --bench "$bench" $transport -- \
		"$@" $peer_args --json >"$tmp/report.json"
	rc=$?
	if [ $json = 1 ]; then
		cat "$tmp/report.json"
	else
		[ $i -gt 1 ] && echo
		/usr/bin/python3 "$tmp/report.py" "$tmp/report.json" "$smoke" "$load" "$peers" ||
			{ [ $rc -ne 0 ] || rc=5; }
	fi
	[ $status -ne 0 ] || status=$rc
done
exit $status
