#!/usr/bin/env bash
# Fuzzes a running node's control port (issue 20): launches a 3-node sim cluster on loopback
# (build/apps/tokenmill, from scripts/build.sh), runs the libFuzzer target fuzz_control_port
# (built in build-fuzz/, as scripts/fuzz.sh builds the others) against the head node's
# control port for SECONDS, then checks that the cluster still serves: every node alive,
# `status` ready with every worker up, and a generate request answered.
#   scripts/fuzz-control-port.sh [SECONDS]     (default 60)
#   TOKENMILL_FUZZ_SEED   libFuzzer's random seed (default: a new one each run)
#   TOKENMILL_FUZZ_RUNS   stop after this many inputs (default: only the time budget)
# Run it without `nice`: the fuzzer lowers its own priority, the nodes must keep theirs.
# The head node runs the router and the supervisor: losing it loses the cluster. Prints
# `fuzz: fuzz_control_port execs=N findings=K` and `cluster after fuzzing: serving` (or
# what failed); exits non-zero on a finding or a cluster that stopped serving. Inputs that
# failed, the fuzzer's log and the node logs are kept in build-fuzz/findings/fuzz_control_port/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
build="$repo/build-fuzz"
bin="$repo/build/apps/tokenmill"
[[ -x "$bin" ]] || { echo "fuzz-control-port: $bin is missing (run scripts/build.sh)"; exit 2; }

if [[ ! -f "$build/build.ninja" ]]; then
  CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S "$repo" -B "$build" -G Ninja \
    -DTOKENMILL_ENABLE_FUZZ=ON -DTOKENMILL_ENABLE_CUDA=OFF -DTOKENMILL_ENABLE_TESTS=OFF \
    -DTOKENMILL_ENABLE_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
ninja -C "$build" -j2 fuzz_control_port

work="$(mktemp -d)"
launch_pid=""
cleanup() {
  if [[ -n "$launch_pid" ]] && kill -0 "$launch_pid" 2>/dev/null; then
    kill -TERM "$launch_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$launch_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$launch_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Six free ports on loopback: RPC, HTTP, three control ports, and room for the metrics ports
# (http_port + 1 + index) right after HTTP.
read -r rpc http c0 c1 c2 < <(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    base = random.randrange(20000, 30000, 10)
    ports = [base, base + 1, base + 5, base + 6, base + 7]
    if all(free(p) for p in ports + [base + 2, base + 3, base + 4]):
        print(*ports); break
EOF
)
cat >"$work/cluster.yaml" <<EOF
cluster: fuzz-control-port
model:
  sim: {decode_step_ms: 2, prefill_us_per_token: 20}
defaults: {engine: sim, block_tokens: 16, kv_transport: inline}
frontend: {node: head, rpc_port: $rpc, http_port: $http}
restart: {max: 0}
nodes:
  - name: head
    address: 127.0.0.1
    port: $c0
    actors: [router, supervisor, kv_store]
  - name: p0
    address: 127.0.0.1
    port: $c1
    actors: [{prefill: {engine: sim, threads: 1}}]
  - name: d0
    address: 127.0.0.1
    port: $c2
    actors: [{decode: {engine: sim, threads: 1, max_batch: 8}}]
EOF
mkdir -p "$work/logs"
"$bin" launch "$work/cluster.yaml" --log-dir "$work/logs" >"$work/launch.out" 2>&1 &
launch_pid=$!
for _ in $(seq 600); do
  grep -q 'ready after' "$work/launch.out" && break
  kill -0 "$launch_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'ready after' "$work/launch.out"; then
  echo "fuzz-control-port: the cluster did not start:"; cat "$work/launch.out"; exit 2
fi
head_pid="$(sed -n 's/^launch: node head *starting (pid \([0-9]*\).*/\1/p' "$work/launch.out")"
mapfile -t node_pids < <(sed -n 's/^launch: node [a-z0-9]* *starting (pid \([0-9]*\).*/\1/p' \
  "$work/launch.out")
echo "fuzz-control-port: cluster ready (head pid $head_pid, control port $c0)"

mkdir -p "$work/corpus" "$work/artifacts"
cp -r "$repo/tests/fuzz/corpus/fuzz_control_port/." "$work/corpus/"
opts=()
[[ -n "${TOKENMILL_FUZZ_SEED:-}" ]] && opts+=("-seed=$TOKENMILL_FUZZ_SEED")
[[ -n "${TOKENMILL_FUZZ_RUNS:-}" ]] && opts+=("-runs=$TOKENMILL_FUZZ_RUNS")
status=0
# The fuzzer runs at the lowest priority, the nodes at the caller's: a starved node misses
# its heartbeats (1 s) and its peers drop it, which is not what this looks for.
TOKENMILL_FUZZ_CONTROL_PORT="$c0" TOKENMILL_FUZZ_CONTROL_PID="$head_pid" \
  nice -n 19 "$build/tests/fuzz/fuzz_control_port" "$work/corpus" "${opts[@]}" -max_total_time="$seconds" \
  -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 -max_len=8192 \
  -artifact_prefix="$work/artifacts/" >"$work/fuzz.log" 2>&1 || status=$?
execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -1)"
findings="$(find "$work/artifacts" -type f | wc -l)"
echo "fuzz: fuzz_control_port execs=${execs:-0} findings=$findings"

# The cluster must still serve: every node alive, ready, every worker up, a request answered.
serving=yes
why=""
for p in "${node_pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { serving=no; why+=" node pid $p is gone;"; }
done
if ! "$bin" status --connect "127.0.0.1:$rpc" --json >"$work/status.json" 2>&1 ||
  ! python3 -c 'import json,sys; s=json.loads(open(sys.argv[1]).read().splitlines()[-1]); sys.exit(0 if s["ready"] and all(w.get("up") for w in s["workers"]) else 1)' "$work/status.json"; then
  serving=no
  why+=" status: $(tail -c 300 "$work/status.json");"
fi
if ! "$bin" generate --connect "127.0.0.1:$rpc" --max-tokens 8 "Hello" >"$work/generate.out" 2>&1; then
  serving=no
  why+=" generate: $(tail -c 300 "$work/generate.out");"
fi
if [[ "$serving" == yes ]]; then
  echo "cluster after fuzzing: serving"
else
  echo "cluster after fuzzing: NOT serving:$why"
fi

if [[ "$status" -ne 0 || "$findings" -ne 0 || "$serving" != yes ]]; then
  mkdir -p "$build/findings/fuzz_control_port"
  cp "$work/fuzz.log" "$work/launch.out" "$build/findings/fuzz_control_port/"
  cp -r "$work/artifacts/." "$work/logs" "$build/findings/fuzz_control_port/" 2>/dev/null || true
  echo "fuzz: fuzz_control_port failed (exit $status); log, inputs and node logs in" \
    "$build/findings/fuzz_control_port/"
  grep -m3 -E 'ERROR|SUMMARY|fuzz_control_port:' "$work/fuzz.log" || true
  exit 1
fi
