#!/usr/bin/env bash
# Overload: offered load from 1x to 10x the cluster's measured capacity (issue 20 item 2).
# Measures the capacity first (or takes --capacity): the completion rate of a closed loop of
# 2 x max_batch + 8 streams on a cluster of its own with adaptive admission off, so that
# every stage is kept busy and nothing is refused. Then starts the cluster under test
# (sim engine by default), fills its KV pools, and offers each level as open-loop Poisson
# arrivals at level x capacity for --duration seconds, printing one row per level: offered
# and admitted req/s, rejected fraction (overloaded / HTTP 429), admitted TTFT p50/p99 (and
# p99 inside the server: less the client-to-frontend and frontend-to-client legs), ITL
# p50/p99, the p99 of the first gap alone (first token to first decode token), RSS of
# every node after the level, and requests the server itself timed out (router status).
# JSON per level and a summary go to --out.
#   ./scripts/bench-overload.sh [--levels "1 2 5 10"] [--duration S] [--capacity RPS]
#       [--engine sim|cpu] [--model FILE] [--three-nodes] [--backend rpc|http]
#       [--max-queue-ms MS] [--ttft-slo-ms MS] [--min-waiting N] [--max-batch N] [--step-ms MS]
#       [--input-len N] [--output-len N] [--out DIR]
# Defaults: levels 1 2 5 10, 180 s per level, sim engine (10 ms decode step, 200 us/token
# prefill), max_batch 8, 128-token prompts, 32-token answers, one process (tokenmill serve;
# --three-nodes: head, prefill and decode nodes started by tokenmill launch). The cpu engine
# needs --model FILE (tokenmill make-model). The server's own admission defaults apply
# unless --max-queue-ms, --ttft-slo-ms (router.ttft_slo_ms) or --min-waiting
# (router.admission_min_waiting) is given. Goal (issue 20):
# admitted p99 TTFT at 10x within 2x of 1x, RSS flat, no request timing out in the server.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${TOKENMILL_BIN:-$repo/build/apps/tokenmill}"
levels="1 2 5 10"
duration=180
capacity=""
engine=sim
model=""
three=0
backend=rpc
max_queue_ms=""
ttft_slo_ms=""
min_waiting=""
max_batch=8
step_ms=10
prefill_us=200
input_len=128
output_len=32
out="$repo/bench-results/overload-$(date -u +%Y%m%d-%H%M%S)"
die() { echo "bench-overload: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --levels) levels="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --capacity) capacity="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --three-nodes) three=1; shift ;;
    --backend) backend="$2"; shift 2 ;;
    --max-queue-ms) max_queue_ms="$2"; shift 2 ;;
    --ttft-slo-ms) ttft_slo_ms="$2"; shift 2 ;;
    --min-waiting) min_waiting="$2"; shift 2 ;;
    --max-batch) max_batch="$2"; shift 2 ;;
    --step-ms) step_ms="$2"; shift 2 ;;
    --input-len) input_len="$2"; shift 2 ;;
    --output-len) output_len="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $engine == sim || $engine == cpu ]] || die "--engine must be sim or cpu, got '$engine'"
[[ $engine == sim || -f $model ]] || die "--engine cpu needs --model FILE (tokenmill make-model -o FILE)"
[[ $backend == rpc || $backend == http ]] || die "--backend must be rpc or http, got '$backend'"
[[ $duration =~ ^[0-9]+$ && $duration -ge 5 ]] || die "--duration must be whole seconds >= 5, got '$duration'"
for l in $levels; do [[ $l =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--levels: '$l' is not a number"; done
[[ -z $max_queue_ms || $max_queue_ms =~ ^[0-9]+$ ]] || die "--max-queue-ms must be whole ms, got '$max_queue_ms'"
[[ -z $ttft_slo_ms || $ttft_slo_ms =~ ^[0-9]+$ ]] || die "--ttft-slo-ms must be whole ms, got '$ttft_slo_ms'"
[[ -z $min_waiting || $min_waiting =~ ^[0-9]+$ ]] || die "--min-waiting must be a whole number, got '$min_waiting'"
[[ -z $capacity || $capacity =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--capacity must be req/s, got '$capacity'"
[[ -x "$bin" ]] || die "no tokenmill binary at $bin (build first, or set TOKENMILL_BIN)"
mkdir -p "$out"
work="$(mktemp -d -t tokenmill-overload.XXXXXX)"

ports() { python3 -c 'import socket
s=[socket.socket() for _ in range('"$1"')]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])'; }
# start_cluster TAG MAX_QUEUE_MS TTFT_SLO_MS MIN_WAITING: starts one cluster (its manifest
# and logs under $work/TAG) and waits until it is ready; '' keeps the server's default.
# Sets pid, rpc, http and manifest.
start_cluster() {
  local tag="$1" mq="$2" slo="$3" mw="$4" p2 p3 p4 h3 h4
  read -r rpc http p2 p3 p4 h3 h4 < <(ports 7)
  local queue_yaml=""
  [[ -n $mq ]] && queue_yaml+=", max_queue_ms: $mq"
  [[ -n $slo ]] && queue_yaml+=", ttft_slo_ms: $slo"
  [[ -n $mw ]] && queue_yaml+=", admission_min_waiting: $mw"
  manifest="$work/$tag.yaml"
  local clog="$work/$tag.log"
  if [[ $three == 1 ]]; then
    local model_yaml
    if [[ $engine == sim ]]; then
      model_yaml="sim: {decode_step_ms: $step_ms, prefill_us_per_token: $prefill_us}"
    else
      model_yaml="path: $(realpath "$model")"
    fi
    cat >"$manifest" <<YAML
cluster: bench-overload
model: {$model_yaml}
frontend: {node: head, rpc_port: $rpc, http_port: $http}
router: {request_timeout_s: 600$queue_yaml}
nodes:
  - {name: head, address: 127.0.0.1, port: $p2, actors: [router, supervisor, kv_store]}
  - {name: p0, address: 127.0.0.1, port: $p3, http_port: $h3, actors: [{prefill: {engine: $engine}}]}
  - {name: d0, address: 127.0.0.1, port: $p4, http_port: $h4, actors: [{decode: {engine: $engine, max_batch: $max_batch}}]}
YAML
    "$bin" launch "$manifest" --log-dir "$work/$tag-logs" >"$clog" 2>&1 &
  else
    local args=(serve --rpc-port "$rpc" --http-port "$http" --prefill-workers 1 --decode-workers 1
                --max-batch "$max_batch")
    if [[ $engine == sim ]]; then
      args+=(--engine sim --sim-decode-step-ms "$step_ms" --sim-prefill-us-per-token "$prefill_us")
    else
      args+=(--model "$model")
    fi
    [[ -n $mq ]] && args+=(--max-queue-ms "$mq")
    [[ -n $slo ]] && args+=(--ttft-slo-ms "$slo")
    [[ -n $mw ]] && args+=(--admission-min-waiting "$mw")
    "$bin" "${args[@]}" >"$clog" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 600); do grep -q "ready" "$clog" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  grep -q "ready" "$clog" || { cat "$clog" >&2; die "the server ($tag) did not start"; }
}
stop_cluster() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }
pid=""
trap 'stop_cluster; rm -rf "$work"' EXIT

# Capacity: the completion rate of a closed loop deep enough to keep every stage busy (the
# decode batch full and a queue in front of the prefill worker), on a cluster of its own
# with adaptive admission off, so that nothing is refused and every request counts.
if [[ -n $capacity ]]; then
  cap_src="given"
else
  start_cluster capacity 0 0 ""
  streams=$((2 * max_batch + 8))
  cap_json="$work/capacity.json"
  conn="127.0.0.1:$rpc"; [[ $backend == http ]] && conn="127.0.0.1:$http"
  "$bin" bench --connect "$conn" --backend "$backend" --input-len "$input_len" \
    --output-len "$output_len" --json --no-progress --output "$cap_json" --timeout 120 \
    --concurrency "$streams" --requests $((streams * 10)) --warmup "$streams" >/dev/null \
    || die "the capacity run failed"
  cp "$cap_json" "$out/capacity.json"
  read -r capacity cap_done cap_refused < <(python3 -c 'import json,sys
j=json.load(open(sys.argv[1])); print(j["requests_per_s"], j["completed"], j.get("rejected", 0))' "$cap_json")
  cap_src="measured: closed loop, $streams streams, adaptive admission off, $cap_done requests completed, $cap_refused refused"
  stop_cluster
fi
start_cluster levels "$max_queue_ms" "$ttft_slo_ms" "$min_waiting"

# The node processes whose RSS is reported: the serve process, or launch's node children.
node_pids() {
  if [[ $three == 1 ]]; then
    for n in head p0 d0; do
      echo "$n $(pgrep -f -- "node --manifest $manifest --name $n\$" | head -1)"
    done
  else
    echo "serve $pid"
  fi
}

python3 - "$bin" "$backend" "127.0.0.1:$rpc" "127.0.0.1:$http" "$out" "$duration" "$capacity" \
  "$cap_src" "$levels" "$input_len" "$output_len" "$max_batch" "$(node_pids | tr '\n' ';')" <<'PY'
import json, os, re, subprocess, sys, time
(bin_, backend, rpc, http, out, duration, capacity, cap_src, levels, input_len, output_len, max_batch,
 nodes) = sys.argv[1:]
duration = int(duration)
nodes = [tuple(x.split()) for x in nodes.split(";") if x.strip()]
connect = rpc if backend == "rpc" else http

def rss_mib():
    r = {}
    for name, pid in nodes:
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
            r[name] = round(int(m.group(1)) / 1024, 1)
        except (OSError, AttributeError):
            r[name] = None
    return r

def router_counters():
    p = subprocess.run([bin_, "status", "--connect", rpc, "--json", "--timeout", "5"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {}
    s = json.loads(p.stdout)
    for w in s.get("workers", []):
        if w["role"] == "router":
            d = w.get("detail", "")
            g = lambda pat: int(m.group(1)) if (m := re.search(pat, d)) else None
            return {"timed_out": g(r"(\d+) timed out"), "rejected": g(r"(\d+) rejected"),
                    "in_flight": w["queued"]}
    return {}

def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4], v[7] if len(v) > 7 else 0  # total, idle+iowait, steal

def probe_http():
    """One HTTP request while the level runs: its status and Retry-After header."""
    import urllib.request, urllib.error
    body = json.dumps({"prompt": [5] * 8, "max_tokens": 1}).encode()
    req = urllib.request.Request(f"http://{http}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return {"status": r.status, "retry_after": r.headers.get("Retry-After")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "retry_after": e.headers.get("Retry-After")}
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"status": None, "error": str(e)}

def bench(extra, tag, probe_after_s=None):
    path = os.path.join(out, f"{tag}.json")
    cmd = [bin_, "bench", "--connect", connect, "--backend", backend, "--input-len", input_len,
           "--output-len", output_len, "--json", "--no-progress", "--output", path,
           "--timeout", "120"] + extra
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = None
    if probe_after_s is not None:
        try:
            p.wait(timeout=probe_after_s)
        except subprocess.TimeoutExpired:
            probe = probe_http()
    _, err = p.communicate()
    if not os.path.exists(path):
        sys.exit(f"bench-overload: {tag}: tokenmill bench failed: {err.strip()[-500:]}")
    j = json.load(open(path))
    j["probe"] = probe
    return j

# KV pools are touched as their blocks are first used: fill them once, so that the RSS
# figures compare working sizes (growth after this is what the levels cost).
st = subprocess.run([bin_, "status", "--connect", rpc, "--json", "--timeout", "5"],
                    capture_output=True, text=True)
kv_total = 4096
if st.returncode == 0:
    kv_total = max([w["kv_total"] for w in json.loads(st.stdout)["workers"]
                    if w["role"] in ("prefill", "decode")] or [kv_total])
fill = int(1.5 * kv_total * 16 / (int(input_len) + int(output_len))) + 50
# Below the admission floor (16 waiting are always admitted), so that the fill is not refused.
streams = min(16, int(max_batch) + 8)
bench(["--concurrency", str(streams), "--requests", str(fill)], "fill")
print(f"filled the KV pools ({kv_total} blocks): {fill} requests; RSS now {rss_mib()} MiB")
cap = float(capacity)
print(f"capacity: {cap:.2f} req/s ({cap_src})")
print(f"{'level':>6} {'offered':>8} {'admitted':>9} {'rejected':>9} {'ttft_p50':>9} "
      f"{'ttft_p99':>9} {'srv_p99':>8} {'itl_p50':>8} {'itl_p99':>8} {'itl1_p99':>8} {'timeouts':>8}  rss_mib")
print(f"{'':>6} {'req/s':>8} {'req/s':>9} {'fraction':>9} {'ms':>9} {'ms':>9} {'ms':>8} {'ms':>8} "
      f"{'ms':>8} {'ms':>8} {'server':>8}")
rows = []
t_cpu0 = cpu_times()
before = router_counters()
rss0 = rss_mib()
for lv in levels.split():
    rate = cap * float(lv)
    n = max(1, int(rate * duration))
    # Open loop: enough client threads for the admitted work plus the refusals in flight.
    conc = min(4096, max(64, int(rate * 2) + 4 * int(max_batch)))
    j = bench(["--rate", f"{rate:.3f}", "--requests", str(n), "--max-concurrency", str(conc)],
              f"level-{lv}x", probe_after_s=duration / 2)
    after = router_counters()
    row = {
        "level": float(lv), "offered_rps": rate, "requests": j["requests"],
        "admitted_rps": j["requests_per_s"], "completed": j["completed"],
        "rejected": j.get("rejected", 0), "rejected_fraction": j.get("rejected_fraction", 0.0),
        "errors": j.get("errors", {}), "late_dispatches": j.get("late_dispatches"),
        "ttft_ms": j["ttft_ms"], "itl_ms": j["itl_ms"], "duration_s": j["duration_s"],
        "itl_first_gap_ms": j.get("itl_first_gap_ms"), "itl_later_gaps_ms": j.get("itl_later_gaps_ms"),
        "itl_p99_tail": j.get("itl_p99_tail"), "dispatch_delay_ms": j.get("dispatch_delay_ms"),
        "ttft_server_ms": j.get("ttft_server_ms"),
        "rss_mib": rss_mib(), "http_probe": j["probe"],
        "server_timed_out": (after.get("timed_out") or 0) - (before.get("timed_out") or 0),
    }
    before = after
    rows.append(row)
    rss = " ".join(f"{k}={v}" for k, v in row["rss_mib"].items())
    print(f"{lv + 'x':>6} {rate:8.1f} {row['admitted_rps']:9.1f} {row['rejected_fraction']:9.3f} "
          f"{j['ttft_ms']['p50']:9.1f} {j['ttft_ms']['p99']:9.1f} "
          f"{(j.get('ttft_server_ms') or {}).get('p99', 0):8.1f} {j['itl_ms']['p50']:8.1f} "
          f"{j['itl_ms']['p99']:8.1f} {(j.get('itl_first_gap_ms') or {}).get('p99', 0):8.1f} "
          f"{row['server_timed_out']:8d}  {rss}  "
          f"http probe: {row['http_probe']}", flush=True)
t_cpu1 = cpu_times()
dt = max(1, t_cpu1[0] - t_cpu0[0])
cpu = {"busy_pct": round(100 * (1 - (t_cpu1[1] - t_cpu0[1]) / dt), 1),
       "steal_pct": round(100 * (t_cpu1[2] - t_cpu0[2]) / dt, 1)}
print(f"machine during the levels: cpu busy {cpu['busy_pct']}%, steal {cpu['steal_pct']}%")
summary = {"capacity_rps": cap, "cpu": cpu, "capacity_source": cap_src, "duration_s_per_level": duration,
           "backend": backend, "input_len": int(input_len), "output_len": int(output_len),
           "max_batch": int(max_batch), "rss_mib_before": rss0, "levels": rows}
if len(rows) >= 2 and rows[0]["ttft_ms"]["p99"]:
    summary["ttft_p99_ratio_last_to_first"] = rows[-1]["ttft_ms"]["p99"] / rows[0]["ttft_ms"]["p99"]
    print(f"admitted p99 TTFT {rows[-1]['level']:g}x / {rows[0]['level']:g}x: "
          f"{summary['ttft_p99_ratio_last_to_first']:.2f} (goal <= 2)")
    srv = [(r.get("ttft_server_ms") or {}).get("p99") for r in (rows[0], rows[-1])]
    if all(srv):
        summary["ttft_server_p99_ratio_last_to_first"] = srv[1] / srv[0]
        print(f"  inside the server (less the client legs): {srv[1] / srv[0]:.2f}")
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary))
PY
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "JSON: $out"
