#!/usr/bin/env bash
# Prefix-reuse benchmark (issue 16 item 5): multi-turn chat and shared-system-prompt workloads
# on a 2-prefill + 2-decode cluster (`tokenmill serve`, one process, sim engine) whose KV pools
# are small enough that blocks are evicted, in four configurations, each adding to the last:
#   cache-only  each worker's own prefix cache, the router's cost model without its prefill
#               term (--router-prefill-weight 0): a cached prefix only breaks ties, as before
#               cost routing; no fetch
#   cost        cost routing (the default weights), no fetch (--no-router-fetch)
#   fetch       cost routing + fetch instead of recompute: a prefill worker pulls the prefix
#               another worker caches (the default)
#   tiers       cost routing + fetch + a second KV tier per worker (host memory, then a disk
#               file)
# Every prompt is prefilled by a prefill worker (--local-prefill-threshold 0), so "tokens
# computed" is the prompt tokens the prefill workers computed; "fetched" counts the blocks
# the prefill workers pulled from peers.
#
#   scripts/bench-prefix.sh [options]
#
#   --workloads "multi-turn shared-prefix"   (default both)
#   --configs "cache-only cost fetch tiers"  (default all four, in this order)
#   --concurrency C        closed-loop streams (default 4)
#   --warmup N             requests (of other chats / prefixes) before measuring (default 0);
#                          they count in the status deltas (hit rate, tokens computed)
#   --conversations N      multi-turn chats (default 7); --turns T turns each (default 6).
#                          Chats are interleaved: a chat's next turn comes after every other
#                          chat's, so its history must survive the other N - 1 prompts
#                          (~50 blocks each) in some pool. 7 overflows each prefill pool (128)
#                          but not the cluster's; with 24 the ~1000 blocks between two turns
#                          of a chat exceed every pool and the cluster (768), so nothing can
#                          hit without the tiers. Odd, so that cache-only's alternation
#                          between the two prefill workers does not pin every chat to one.
#   --prefixes N           shared-prefix system prompts (default 12), --users U each (default 4)
#   --system-len L         system prompt tokens (default 512)
#   --input-len L          user message tokens (default 64)
#   --output-len L         max_tokens per request, also each earlier answer's length (default 16)
#   --prefill-blocks N     KV blocks per prefill worker (default 128)
#   --decode-blocks N      KV blocks per decode worker (default 256)
#   --host-blocks N        tiers: host tier blocks per worker (default 512)
#   --disk-blocks N        tiers: disk tier blocks per worker (default 1024)
#   --prefill-us-per-token sim prefill cost (default 200)
#   --decode-step-ms       sim decode step (default 5)
#   --out DIR              results (default bench-results/prefix-<YYYYmmdd-HHMMSS>)
#   TOKENMILL_BIN=path     tokenmill binary (default build/apps/tokenmill)
#
# Checks that every prompt got the same tokens in every configuration (bench --record files,
# DIR/<workload>-<config>.records.jsonl): reuse, fetch and onboarding must not change them.
# Prints a table and writes DIR/<workload>-<config>.json (bench), DIR/<...>-status-{before,after}.json
# and DIR/summary.json: per run prefix hit rate (prefill workers: prompt blocks reused / looked up),
# tokens computed, blocks fetched from peers, tier onboards, TTFT p50/p99 (ms), requests/s
# and output tokens/s.
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${TOKENMILL_BIN:-$repo/build/apps/tokenmill}"
py=/usr/bin/python3
[[ -x $py ]] || py=python3

workloads="multi-turn shared-prefix" configs="cache-only cost fetch tiers" conc=4 warmup=0
convs=7 turns=6 prefixes=12 users=4 system_len=512 input_len=64 output_len=16
pblocks=128 dblocks=256 hblocks=512 kblocks=1024 us_per_token=200 step_ms=5 out=""
while (($#)); do
  case "$1" in
    --workloads) workloads=${2:?}; shift ;;
    --configs) configs=${2:?}; shift ;;
    --concurrency) conc=${2:?}; shift ;;
    --warmup) warmup=${2:?}; shift ;;
    --conversations) convs=${2:?}; shift ;;
    --turns) turns=${2:?}; shift ;;
    --prefixes) prefixes=${2:?}; shift ;;
    --users) users=${2:?}; shift ;;
    --system-len) system_len=${2:?}; shift ;;
    --input-len) input_len=${2:?}; shift ;;
    --output-len) output_len=${2:?}; shift ;;
    --prefill-blocks) pblocks=${2:?}; shift ;;
    --decode-blocks) dblocks=${2:?}; shift ;;
    --host-blocks) hblocks=${2:?}; shift ;;
    --disk-blocks) kblocks=${2:?}; shift ;;
    --prefill-us-per-token) us_per_token=${2:?}; shift ;;
    --decode-step-ms) step_ms=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    -h | --help) sed -n '2,50p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-prefix: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
[[ -x $bin ]] || { echo "bench-prefix: no tokenmill binary at $bin (build it, or set TOKENMILL_BIN)" >&2; exit 1; }
out=${out:-$repo/bench-results/prefix-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

pid=""
stop() { [[ -n $pid ]] && { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; pid=""; }
trap stop EXIT

run_one() {  # workload config
  local w=$1 c=$2 log="$out/$1-$2.serve.log" extra=()
  case "$c" in
    cache-only) extra=(--router-prefill-weight 0 --no-router-fetch) ;;
    cost) extra=(--no-router-fetch) ;;
    fetch) ;;
    tiers) extra=(--kv-host-blocks "$hblocks" --kv-disk-blocks "$kblocks" --kv-disk-dir "$out") ;;
    *) echo "bench-prefix: unknown config '$c'" >&2; return 1 ;;
  esac
  "$bin" serve --engine sim --rpc-port 0 --no-http --prefill-workers 2 --decode-workers 2 \
    --prefill-kv-blocks "$pblocks" --decode-kv-blocks "$dblocks" --local-prefill-threshold 0 \
    --sim-prefill-us-per-token "$us_per_token" --sim-decode-step-ms "$step_ms" \
    "${extra[@]}" >"$log" 2>&1 &
  pid=$!
  local ep=""
  for _ in $(seq 1 300); do
    ep="$(sed -n 's/.*ready.*rpc=\([^ ]*\).*/\1/p' "$log" | head -1)"
    [[ -n $ep ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $ep ]] || { echo "bench-prefix: server did not start ($log):" >&2; tail -5 "$log" >&2; stop; return 1; }
  local wl_args=()
  if [[ $w == multi-turn ]]; then
    wl_args=(--workload multi-turn --conversations "$convs" --turns "$turns")
  else
    wl_args=(--workload shared-prefix --prefixes "$prefixes" --users "$users")
  fi
  "$bin" status --connect "$ep" --json >"$out/$w-$c-status-before.json"
  "$bin" bench --connect "$ep" "${wl_args[@]}" --prefix-len "$system_len" --input-len "$input_len" \
    --output-len "$output_len" --concurrency "$conc" --warmup "$warmup" --json --no-progress \
    --output "$out/$w-$c.json" --record "$out/$w-$c.records.jsonl" >/dev/null 2>"$out/$w-$c.bench.log" ||
    { echo "bench-prefix: bench failed ($out/$w-$c.bench.log)" >&2; stop; return 1; }
  "$bin" status --connect "$ep" --json >"$out/$w-$c-status-after.json"
  stop
}

cpu="$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
echo "bench-prefix: $cpu, $(nproc) CPUs; results in $out"
vmstat 1 3 | tail -1 | awk '{print "bench-prefix: CPU steal before the runs: " $16 "%"}'
for w in $workloads; do
  for c in $configs; do
    echo "bench-prefix: $w / $c ..."
    run_one "$w" "$c" || exit 1
  done
done
steal_after="$(vmstat 1 3 | tail -1 | awk '{print $16}')"

"$py" - "$out" "$cpu" "$steal_after" "$workloads" "$configs" <<'EOF'
import json, re, sys
out, cpu, steal, workloads, configs = sys.argv[1:6]
rows = []
def workers(path):
    return {w["name"]: w for w in json.load(open(path))["workers"]}
for w in workloads.split():
    for c in configs.split():
        b = json.load(open(f"{out}/{w}-{c}.json"))
        before, after = workers(f"{out}/{w}-{c}-status-before.json"), workers(f"{out}/{w}-{c}-status-after.json")
        def delta(role, field):
            return sum(a.get(field, 0) - before.get(n, {}).get(field, 0)
                       for n, a in after.items() if a["role"] == role)
        hits, looked = delta("prefill", "prefix_hit_blocks"), delta("prefill", "prefix_lookup_blocks")
        onboarded = sum(t["hits"] for a in after.values() for t in a.get("tiers", []))
        def fetched(ws):  # blocks pulled from peers (status `fetch`; older builds: the detail)
            n = 0
            for a in ws.values():
                if "fetch" in a:
                    n += a["fetch"]["blocks"]
                elif m := re.search(r"fetched (\d+) blocks", a.get("detail", "")):
                    n += int(m.group(1))
            return n
        rows.append({
            "workload": w, "config": c,
            "requests": b["requests"], "failed": b["failed"],
            "prefix_hit_rate": hits / looked if looked else 0.0,
            "prefill_hit_blocks": hits, "prefill_lookup_blocks": looked,
            "tokens_computed": delta("prefill", "tokens_out"),
            "prompt_tokens": b["prompt_tokens"],
            "tier_onboarded_blocks": onboarded,
            "fetched_blocks": fetched(after) - fetched(before),
            "ttft_p50_ms": b["ttft_ms"]["p50"], "ttft_p99_ms": b["ttft_ms"]["p99"],
            "requests_per_s": b["requests_per_s"], "output_tokens_per_s": b["output_tokens_per_s"],
        })
# Every hit's tokens identical to recomputing: each prompt (by prompt_hash) must get the same
# tokens in every configuration of its workload, whichever reused, fetched, onboarded or
# computed its prefix (greedy sampling, so a request's tokens depend on its prompt only).
def tokens_by_prompt(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("outcome") in ("length", "stop", "eos"):
            out[r["prompt_hash"]] = [t[1] for t in sorted(r["tokens"], key=lambda t: t[0])]
    return out
mismatches = {}
for w in workloads.split():
    runs = {c: tokens_by_prompt(f"{out}/{w}-{c}.records.jsonl") for c in configs.split()}
    ref_c = configs.split()[0]
    bad = 0
    for c, run in runs.items():
        for h, toks in run.items():
            ref = runs[ref_c].get(h)
            if ref is not None and ref != toks:
                bad += 1
    mismatches[w] = bad
    for r in rows:
        if r["workload"] == w:
            r["token_mismatches"] = sum(1 for h, t in runs[r["config"]].items()
                                        if runs[ref_c].get(h) not in (None, t))
summary = {"cpu": cpu, "cpu_steal_after_pct": float(steal or 0), "rows": rows}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
hdr = f"{'workload':<13} {'config':<10} {'hit rate':>8} {'computed':>9} {'prompt':>8} {'fetched':>7} {'onboard':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'req/s':>7} {'tok/s':>7} {'fail':>4}"
print(hdr)
for r in rows:
    print(f"{r['workload']:<13} {r['config']:<10} {r['prefix_hit_rate']:>8.3f} {r['tokens_computed']:>9} "
          f"{r['prompt_tokens']:>8} {r['fetched_blocks']:>7} {r['tier_onboarded_blocks']:>7} {r['ttft_p50_ms']:>9.1f} "
          f"{r['ttft_p99_ms']:>9.1f} {r['requests_per_s']:>7.2f} {r['output_tokens_per_s']:>7.1f} {r['failed']:>4}")
for w, bad in mismatches.items():
    print(f"{w}: {bad} completed requests whose tokens differ from the same prompt's in "
          f"{configs.split()[0]} (must be 0)")
print(f"cpu: {cpu}; steal after the runs: {steal}%")
print(f"json: {out}/summary.json")
EOF
