#!/usr/bin/env bash
# Runtime overhead of the single-process cluster (issue: cluster core). Starts
# `tokenmill serve` with the sim engine at a 10 ms decode step and 200 us/token prefill,
# runs N concurrent streams for each N, and prints:
#   - client-side ITL p50/p99 divided by the configured step (runtime overhead; 1.00 = none)
#   - the first gap of each stream (first token, from the prefill worker, to the second, from
#     the decode worker's next step: p50 / step) and the p99 of the later gaps alone: with
#     more than one stream a new sequence joins the decode batch at a step boundary, so its
#     first gap is up to two steps, and with 63 gaps per request the first gaps alone are
#     1.6 % of all gaps, above the p99
#   - the p99 of the same later gaps as the router released them (router_p99: what the
#     frontend, the RPC and the client add is itl_p99 minus it) and of the decode steps
#     under them (step_p99: from the decode worker's submit to its result, both engine
#     thread handoffs included)
#   - the p99 of what router -> client delivery adds to each of those gaps (delivery_p99_ms:
#     the frontend, the RPC and the client, apart from the steps; itl_delivery_ms in the JSON)
#   - TTFT minus the modelled prefill time (the runtime's own share of TTFT)
# Then the machine's wake-up floor at the same step (tokenmill bench-wake): the ITL p99 an
# idle thread alone would show here, to judge the tail against.
# Results (one JSON per concurrency, wake.json) go to $OUT_DIR (default bench-results/core).
#   ./scripts/bench-core.sh [--three-nodes [--tls]] [--first-token prefill|decode]
#                           [--client-loop thread|one] [CONCURRENCY...]
#                                                                       default: 1 4 16
# --first-token decode: the decode worker streams each prompt's first token as the sequence
# joins its first decode step (serve --first-token), so the first gap is one step too.
# --client-loop one: the bench client reads every stream on one event-loop thread (tokenmill
# bench --client-loop) instead of a thread per stream; the default is thread.
# --three-nodes runs the same cluster as three processes (head: router, supervisor,
# kv-store; prefill node; decode node) started by `tokenmill launch` on loopback; with --tls
# too, the nodes talk mutual TLS (security: {tls: auto}, certificates made by launch).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${TOKENMILL_BIN:-$repo/build/apps/tokenmill}"
[[ -x "$bin" ]] || TOKENMILL_SKIP_SETUP=1 "$repo/scripts/build.sh"
out="${OUT_DIR:-$repo/bench-results/core}"
mkdir -p "$out"
three=0
tls=0
first_token=prefill
client_loop=thread
levels=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --three-nodes) three=1 ;;
    --tls) tls=1 ;;
    --first-token)
      first_token="${2:-}"
      shift
      [[ "$first_token" == prefill || "$first_token" == decode ]] ||
        { echo "bench-core: --first-token takes prefill or decode, got '$first_token'" >&2; exit 2; }
      ;;
    --client-loop)
      client_loop="${2:-}"
      shift
      [[ "$client_loop" == thread || "$client_loop" == one ]] ||
        { echo "bench-core: --client-loop takes thread or one, got '$client_loop'" >&2; exit 2; }
      ;;
    *) levels+=("$1") ;;
  esac
  shift
done
[[ ${#levels[@]} -gt 0 ]] || levels=(1 4 16)
# The default is not passed on, so that the script still runs a binary without the option.
first_token_args=()
[[ "$first_token" == prefill ]] || first_token_args=(--first-token "$first_token")
client_loop_args=()
[[ "$client_loop" == thread ]] || client_loop_args=(--client-loop "$client_loop")
step_ms=10
prefill_us=200
input_len=128
output_len=64

log="$(mktemp -t tokenmill-bench.XXXXXX)"
work="$(mktemp -d -t tokenmill-bench.XXXXXX)"
if [[ "$three" == 1 ]]; then
  read -r p0 p1 p2 p3 p4 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  cat >"$work/cluster.yaml" <<YAML
cluster: bench-3node
model:
  sim: {decode_step_ms: $step_ms, prefill_us_per_token: $prefill_us}
frontend: {node: head, rpc_port: $p0, http_port: $p1}
$([[ $tls == 1 ]] && echo "security: {tls: auto}")
nodes:
  - {name: head, address: 127.0.0.1, port: $p2, actors: [router, supervisor, kv_store]}
  - {name: p0, address: 127.0.0.1, port: $p3, actors: [prefill]}
  - {name: d0, address: 127.0.0.1, port: $p4, actors: [$([[ $first_token == prefill ]] && echo decode || echo "{decode: {first_token: $first_token}}")]}
YAML
  "$bin" launch "$work/cluster.yaml" --log-dir "$work/logs" >"$log" 2>&1 &
else
  "$bin" serve --engine sim --rpc-port 0 --sim-decode-step-ms "$step_ms" \
    --sim-prefill-us-per-token "$prefill_us" --prefill-workers 1 --decode-workers 1 \
    ${first_token_args[@]+"${first_token_args[@]}"} >"$log" 2>&1 &
fi
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$log" "$work"' EXIT
for _ in $(seq 1 300); do grep -q "ready" "$log" && grep -q "rpc=" "$log" && break; sleep 0.1; done
endpoint="$(sed -n 's/.*ready.*rpc=\([^ ]*\).*/\1/p' "$log" | head -1)"
[[ -n "$endpoint" ]] || { echo "bench-core: server did not start" >&2; cat "$log" >&2; exit 1; }

echo "mode: $([[ $three == 1 ]] && echo "three processes (tokenmill launch$([[ $tls == 1 ]] && echo ', mutual TLS between nodes'))" || echo 'one process (tokenmill serve)'), first token from the $first_token worker, bench client: $([[ $client_loop == one ]] && echo 'one event loop' || echo 'a thread per stream')"
echo "machine: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r _ u0 n0 s0 i0 w0 q0 sq0 st0 _ < /proc/stat
printf '%-12s %12s %12s %14s %14s %15s %14s %16s %14s %12s   %s\n' concurrency itl_p50/step itl_p99/step first_gap/step later_p99/step router_p99/step step_p99/step delivery_p99_ms ttft_p50_ms runtime_ms tokens/s \
  "tail gaps (> 1.1 step): n, mean ms = step + between steps + router hold + delivery"
for c in "${levels[@]}"; do
  "$bin" bench --connect "$endpoint" --concurrency "$c" --requests $((c * 8)) --warmup "$c" \
    --input-len "$input_len" --output-len "$output_len" --step-ms "$step_ms" \
    --prefill-us-per-token "$prefill_us" ${client_loop_args[@]+"${client_loop_args[@]}"} \
    --json >"$out/c$c.json"
  python3 - "$out/c$c.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
step = j['itl_ms']['p50'] / j['itl_over_step']['p50']  # the configured step, ms
print(f"{j['concurrency']:<12} {j['itl_over_step']['p50']:12.4f} {j['itl_over_step']['p99']:12.4f} "
      f"{j['itl_first_gap_ms']['p50'] / step:14.4f} {j['itl_later_gaps_ms']['p99'] / step:14.4f} "
      + (f"{j['itl_at_router_ms']['p99'] / step:15.4f} {j['itl_step_ms']['p99'] / step:14.4f} "
         if 'itl_at_router_ms' in j else f"{'-':>15} {'-':>14} ")
      + (f"{j['itl_delivery_ms']['p99']:16.3f} " if 'itl_delivery_ms' in j else f"{'-':>16} ")
      + f"{j['ttft_ms']['p50']:14.2f} {j['ttft_runtime_share_ms']['p50']:14.3f} {j['output_tokens_per_s']:12.1f}   "
      + (lambda t: f"{t['tail_gaps']}/{t['gaps']}, {t['mean_ms']['gap']:.2f} = {t['mean_ms']['step']:.2f} + "
         f"{t['mean_ms']['between_steps']:.3f} + {t['mean_ms']['router_hold']:.3f} + {t['mean_ms']['delivery']:.3f}")(j['itl_tail'])
      if 'itl_tail' in j else "")
PY
done
# The machine's own floor under these figures: how late a thread that only sleeps wakes
# (tokenmill bench-wake, at the same step). A runtime adding nothing would show an ITL p99
# of about the "floor" ratio; each hop of a token (engine thread, router, frontend, client)
# can add up to one handoff p99.
"$bin" bench-wake --period-ms "$step_ms" --count 300 --json >"$out/wake.json"
python3 - "$out/wake.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s, h = j['rows']['spin_late'], j['rows']['handoff']
print(f"machine wake-up floor (tokenmill bench-wake): a {j['period_ms']:g} ms step wait wakes "
      f"p99 {s['p99_us']:.0f} µs late (ITL p99 floor {j['itl_p99_floor_ratio']:.3f}x the step "
      f"before any hop); a thread woken by another: p50 {h['p50_us']:.0f} µs, p99 {h['p99_us']:.0f} µs")
PY
read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
tot=$(( (u1+n1+s1+i1+w1+q1+sq1+st1) - (u0+n0+s0+i0+w0+q0+sq0+st0) ))
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); CPU steal during the run: $(python3 -c "print(f'{100*$((st1-st0))/max(1,$tot):.2f}%')")"
echo "JSON: $out"
