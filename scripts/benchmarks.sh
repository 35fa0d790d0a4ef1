#!/usr/bin/env bash
# Runs the figures in docs/benchmarks.md: chatbench against `chatd all`
# (generator and server on the same machine), a 1 GiB file relayed between
# two edges in separate processes, a raw NATS loop for comparison, and the
# Go benchmarks. Usage: scripts/benchmarks.sh [OUTDIR [PART...]], where a
# PART is one of private group login idle nats files go (all by default);
# the whole run takes about 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/chatd-bench.XXXXXX)}
shift || true
parts=${*:-private group login idle nats files go}
mkdir -p "$out"
bin=$(mktemp -d)
go build -o "$bin/chatd" ./cmd/chatd
go build -o "$bin/chatbench" ./cmd/chatbench
cheap=(--argon2-time 1 --argon2-memory 8KiB) # the lowest hash cost: for benchmarks only
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start NAME ARGS...: runs chatd in the background, waits for its ready line.
start() {
	local name=$1
	shift
	"$bin/chatd" "$@" 2>"$out/$name.log" &
	pids+=($!)
	for _ in $(seq 100); do
		grep -qs 'msg="chatd ready"' "$out/$name.log" && return
		sleep 0.1
	done
	echo "chatd $name did not start:" >&2
	cat "$out/$name.log" >&2
	exit 1
}

# all NAME ARGS...: a fresh `chatd all` on 127.0.0.1:18000.
all() {
	cleanup
	pids=()
	local name=$1
	shift
	# No per-connection request limit: each generator connection sends
	# thousands of requests a second, far past the default allowance.
	start "$name" all --data "$(mktemp -d)" --listen 127.0.0.1:18000 --http '' --metrics '' --client-rate 0 "$@"
	server=${pids[-1]}
}

# run CHATBENCH-ARGS...: chatbench, its summary kept; a run that counted
# errors (exit status 3) is reported, not fatal.
run() {
	set +e
	"$bin/chatbench" "$@" 2>>"$out/chatbench.log" | tee -a "$out/summary.txt"
	local rc=${PIPESTATUS[0]}
	set -e
	[ "$rc" = 0 ] || [ "$rc" = 3 ] || exit "$rc"
}

bench() {
	local name=$1
	shift
	run "$@" --addr 127.0.0.1:18000 --pid "$server" --json "$out/$name.json" --svg "$out/$name.svg"
}

want() { [[ " $parts " == *" $1 "* ]]; }

echo "# $(date -u +%FT%TZ) $(uname -sr), $(nproc) cores, $(go version | cut -d' ' -f3)" | tee -a "$out/summary.txt"

if want private; then
	all private "${cheap[@]}"
	# The raw NATS loop of the same shape right after, on the same chart.
	bench private private --pairs 20 --window 1 --duration 20s --with-nats
	# The same connections and window on ping and pong: the server's
	# socket and framing work with nothing behind it.
	bench ping ping --conns 20 --window 1 --duration 20s
fi
if want group; then
	all group "${cheap[@]}"
	bench group group --members 100 --senders 4 --window 8 --duration 20s
	# A busier group: twice the members talking at once.
	bench group-8 group --members 100 --senders 8 --window 8 --duration 20s
fi
if want login; then
	all login-cheap "${cheap[@]}"
	bench login-cheap login --users 2000 --friends 20 --duration 20s
	all login-default
	bench login-default login --users 200 --friends 20 --concurrency 8 --setup-concurrency 4 --setup-timeout 5m --duration 20s
fi
if want idle; then
	all idle "${cheap[@]}"
	# 19000: the per-process limit here is 20000 open files. A hold of
	# 150 s spans the runtime's periodic collection, which returns the
	# memory the login burst used to the system; the RSS read at the end
	# is what idle connections cost.
	bench idle idle --conns 19000 --hold 150s
fi
cleanup
pids=()
if want nats; then
	run nats --pairs 20 --window 1 --duration 20s --json "$out/nats.json" --svg "$out/nats.svg"
	# The same loop without sockets, as `chatd all` connects to NATS.
	run nats --pairs 20 --window 1 --duration 20s --in-process --json "$out/nats-in-process.json"
fi
if want files; then
	# Four processes: a file from a client of one edge to a client of another.
	# The ports are below Linux's ephemeral range (32768 and up), where the
	# client ends of earlier parts' connections may still hold one.
	data=$(mktemp -d)
	start broker broker --nats-listen 127.0.0.1:24222 --http '' --data "$data/broker"
	start worker worker --nats nats://127.0.0.1:24222 --data "$data/worker" "${cheap[@]}"
	start edge1 edge --nats nats://127.0.0.1:24222 --listen 127.0.0.1:28001 --file-ports 28100-28149
	start edge2 edge --nats nats://127.0.0.1:24222 --listen 127.0.0.1:28002 --file-ports 28150-28199
	list=$(
		IFS=,
		echo "${pids[*]}"
	)
	run files --addr 127.0.0.1:28001 --addr2 127.0.0.1:28002 --transfers 1 --size 1GiB --count 1 \
		--verify=false --pid "$list" --json "$out/files.json"
	cleanup
	pids=()
fi
if want go; then
	go test -run XXX -bench 'Decoder|Object|CounterWith' -benchmem ./internal/... | tee -a "$out/summary.txt"
	go test -run XXX -bench 'Reads' -benchmem ./storage | tee -a "$out/summary.txt"
	go test -run XXX -bench 'PrivateChat|GroupFanOut' -benchmem ./edge | tee -a "$out/summary.txt"
	go test -run XXX -bench 'VerifyParallel' ./internal/passwd | tee -a "$out/summary.txt"
	go test -run XXX -bench Dispatch -benchmem ./workers | tee -a "$out/summary.txt"
	go test -run XXX -bench CatchUp -benchtime 1000000x ./workers | tee -a "$out/summary.txt"
fi
echo "results in $out"
