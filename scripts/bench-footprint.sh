#!/usr/bin/env bash
# Footprint and single-machine serving of `tokenmill serve --model F` with no other option
# (issue 21 items 4 and 5), for one or more tokenmill binaries side by side (e.g. main's
# build and this one), each measured in turn on the same model:
#   - ready: seconds from exec to the "tokenmill ready" line
#   - RSS (VmRSS) 1 s after ready, and after the load below
#   - idle CPU: % of one core over IDLE seconds with no request (/proc/PID/stat)
#   - closed-loop HTTP load, 256-token prompts, 64 output tokens, at concurrency 1 and 4:
#     output tok/s, TTFT p50/p99, ITL p50/p99 (from `tokenmill bench --json`)
# and the CPU steal (/proc/stat) during each measurement. One JSON line per binary and
# phase, then a table.
#   ./scripts/bench-footprint.sh --model 125m.gguf [--idle 30] [--quick] [BIN...]
# BIN defaults to build/apps/tokenmill. --quick: fewer requests (c=1: 3, c=4: 8).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model=""
idle=30
quick=0
bins=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --idle) idle="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[[ -n "$model" && -e "$model" ]] || { echo "bench-footprint: --model FILE is required (tokenmill make-model --preset 125m -o F)" >&2; exit 2; }
[[ ${#bins[@]} -gt 0 ]] || bins=("$repo/build/apps/tokenmill")
tick=$(getconf CLK_TCK)
log=$(mktemp)
results=$(mktemp)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -f "$log" "$results"; }
trap cleanup EXIT

cpu_stat() { awk '/^cpu /{s=0; for (i=2;i<=NF;i++) s+=$i; print $9, s}' /proc/stat; }
steal_pct() {  # "steal0 total0" "steal1 total1"
  echo "$1 $2" | awk '{d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0)}'
}
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$pid/status"; }

start() {  # BIN; sets pid and ready (seconds from exec to the ready line)
  : >"$log"
  local t0 t1
  t0=$(date +%s.%N)
  "$1" serve --model "$model" --rpc-port 0 --http-port 0 >"$log" 2>&1 &
  pid=$!
  until grep -q "tokenmill ready" "$log"; do
    kill -0 "$pid" 2>/dev/null || { echo "bench-footprint: $1 serve exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  ready=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

load() {  # BIN CONCURRENCY REQUESTS WARMUP -> bench JSON
  local http
  http=$(grep -o 'http=[0-9.:]*' "$log" | head -1 | cut -d= -f2)
  "$1" bench --connect "$http" --backend http --concurrency "$2" --requests "$3" --warmup "$4" \
    --input-len 256 --output-len 64 --ignore-eos --json --no-progress 2>/dev/null | tail -1
}

for bin in "${bins[@]}"; do
  start "$bin"
  topo=$(grep -o 'prefill_workers=[0-9]* decode_workers=[0-9]*\( threads=[0-9]*\)\?' "$log" | head -1)
  sleep 1
  rss_idle=$(rss_mb)
  s0=$(cpu_stat); c0=$(awk '{print $14+$15}' "/proc/$pid/stat"); w0=$(date +%s.%N)
  sleep "$idle"
  c1=$(awk '{print $14+$15}' "/proc/$pid/stat"); w1=$(date +%s.%N); s1=$(cpu_stat)
  idle_pct=$(awk -v c0="$c0" -v c1="$c1" -v t="$tick" -v w0="$w0" -v w1="$w1" \
    'BEGIN {printf "%.3f", 100 * (c1 - c0) / t / (w1 - w0)}')
  steal_idle=$(steal_pct "$s0" "$s1")
  for conc in 1 4; do
    if [[ $conc == 1 ]]; then n=$((quick ? 3 : 6)); w=1; else n=$((quick ? 8 : 16)); w=4; fi
    s0=$(cpu_stat)
    j=$(load "$bin" "$conc" "$n" "$w")
    s1=$(cpu_stat)
    echo "$j" | python3 -c "
import json, sys
j = json.loads(sys.stdin.read())
print(json.dumps({'bin': '$bin', 'phase': 'load', 'concurrency': $conc, 'topology': '$topo',
  'output_tok_s': j['output_tokens_per_s'], 'ttft_p50_ms': j['ttft_ms']['p50'],
  'ttft_p99_ms': j['ttft_ms']['p99'], 'itl_p50_ms': j['itl_ms']['p50'],
  'itl_p99_ms': j['itl_ms']['p99'], 'completed': j.get('completed'), 'steal_pct': $(steal_pct "$s0" "$s1")}))
" >>"$results"
  done
  rss_load=$(rss_mb)
  stop
  echo "{\"bin\": \"$bin\", \"phase\": \"footprint\", \"topology\": \"$topo\", \"ready_s\": $ready, \"rss_idle_mb\": $rss_idle, \"rss_after_load_mb\": $rss_load, \"idle_cpu_pct\": $idle_pct, \"idle_s\": $idle, \"steal_pct\": $steal_idle}" >>"$results"
done

cat "$results"
echo "model: $model  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)  cores: $(nproc)"
python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if r['phase'] == 'footprint':
        print(f"{r['bin']}: {r['topology']}: ready {r['ready_s']:.2f} s, RSS idle {r['rss_idle_mb']:.0f} MB, "
              f"after load {r['rss_after_load_mb']:.0f} MB, idle CPU {r['idle_cpu_pct']:.2f}% of a core "
              f"over {r['idle_s']} s (steal {r['steal_pct']}%)")
for r in rows:
    if r['phase'] == 'load':
        print(f"{r['bin']}: c={r['concurrency']}: {r['output_tok_s']:.1f} out tok/s, TTFT p50 "
              f"{r['ttft_p50_ms']:.0f} p99 {r['ttft_p99_ms']:.0f} ms, ITL p50 {r['itl_p50_ms']:.1f} "
              f"p99 {r['itl_p99_ms']:.1f} ms (steal {r['steal_pct']}%)")
EOF
