#!/usr/bin/env bash
# Runtime overhead of the single-process cluster (issue: cluster core). Starts
# `tokenmill serve` with the sim engine at a 10 ms decode step and 200 us/token prefill,
# runs N concurrent streams for each N, and prints:
#   - client-side ITL p50/p99 divided by the configured step (runtime overhead; 1.00 = none)
#   - TTFT minus the modelled prefill time (the runtime's own share of TTFT)
# Results (one JSON per concurrency plus a summary) go to $OUT_DIR (default bench-results/core).
#   ./scripts/bench-core.sh [CONCURRENCY...]      default: 1 4 16
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/build/apps/tokenmill"
[[ -x "$bin" ]] || TOKENMILL_SKIP_SETUP=1 "$repo/scripts/build.sh"
out="${OUT_DIR:-$repo/bench-results/core}"
mkdir -p "$out"
levels=("$@")
[[ ${#levels[@]} -gt 0 ]] || levels=(1 4 16)
step_ms=10
prefill_us=200
input_len=128
output_len=64

log="$(mktemp -t tokenmill-bench.XXXXXX)"
"$bin" serve --engine sim --rpc-port 0 --sim-decode-step-ms "$step_ms" \
  --sim-prefill-us-per-token "$prefill_us" --prefill-workers 1 --decode-workers 1 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 300); do grep -q ready "$log" && break; sleep 0.1; done
endpoint="$(sed -n 's/.*rpc=\([^ ]*\).*/\1/p' "$log" | head -1)"
[[ -n "$endpoint" ]] || { echo "bench-core: server did not start" >&2; cat "$log" >&2; exit 1; }

echo "machine: $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-12s %12s %12s %14s %14s %12s\n' concurrency itl_p50/step itl_p99/step ttft_p50_ms runtime_ms tokens/s
for c in "${levels[@]}"; do
  "$bin" bench --connect "$endpoint" --concurrency "$c" --requests $((c * 8)) --warmup "$c" \
    --input-len "$input_len" --output-len "$output_len" --step-ms "$step_ms" \
    --prefill-us-per-token "$prefill_us" --json >"$out/c$c.json"
  python3 - "$out/c$c.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"{j['concurrency']:<12} {j['itl_over_step']['p50']:12.4f} {j['itl_over_step']['p99']:12.4f} "
      f"{j['ttft_ms']['p50']:14.2f} {j['ttft_runtime_share_ms']['p50']:14.3f} {j['output_tokens_per_s']:12.1f}")
PY
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "JSON: $out"
