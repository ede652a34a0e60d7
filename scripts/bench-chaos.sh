#!/usr/bin/env bash
# Chaos benchmark (issue 14, item 5): what faults during steady load cost the requests in
# flight. On this machine's loopback it launches a cluster with spare capacity (head:
# supervisor, router, kv-store, frontend; prefill nodes p0, p1; decode nodes d0, d1; sim
# engine, 10 ms decode steps, 200 us per prompt token, kv_transport ucx, heartbeats
# 200 ms / 1 s) and runs one seeded workload (`tokenmill bench --seed S --seed-base B
# --temperature T --record FILE`) twice, each time on a freshly launched cluster:
#   1. the reference: undisturbed (closed loop with --quick, else at the same rate);
#   2. the chaos run: open loop (Poisson, --rate) long enough to cover the faults, which are
#      injected one after the other with gaps:
#        kill-decode   SIGKILL of decode node d0's process
#        kill-prefill  SIGKILL of prefill node p0's process
#        stop-decode   SIGSTOP of decode node d1 for 3 s, then SIGCONT
#        link-cut      reported as skipped, with the reason: not root, no `ip`, or (as root)
#                      not implemented: the node would need a network namespace of its own,
#                      which `tokenmill launch` cannot start, and this loopback cluster shares
#                      one (scripts/bench-failure.sh --only cut measures a cut in the netns
#                      3-host cluster)
#      The generated manifest asks for `restart: {max: 5, backoff_ms: 200}` when
#      `tokenmill manifest check` accepts that key (node restart by `launch`). After each kill the script waits up to 3 s for the launcher to bring
#      the node back, and otherwise starts it again itself
#      with `tokenmill node` (--no-relaunch: leaves it dead), so the next fault finds spare
#      capacity. Node pids come from `pgrep -f 'node --manifest <this run's manifest> --name N'`.
# Then `tokenmill status --json` is polled until the cluster is idle (at most 12 s: a
# failed request's blocks may be held op_timeout_ms + 1 s until late writes drain).
#
# Figures (scripts/chaos_report.py computes them from the two record files):
#   sent        requests of the chaos run (every one is recorded)
#   completed   ended with a finish reason (length, stop, eos)
#   failed      did not complete: ended with an error code, or hung until bench's --timeout
#               (completed + failed = sent)
#   lost        failed requests the faults explain: hung (no completion and no error within
#               the bounded --timeout: outcome "timeout" after >= 0.99 x the timeout) or ended
#               with worker_failed, no_workers, unavailable, timeout, kv_corrupt or internal.
#               invalid_request, overloaded, cancelled, out_of_blocks are failed, not lost.
#   migrated    requests whose record has migrations > 0; null while the router reports no
#               migration count (a tokenmill without migration)
#   differing   requests with a token at some index different from the reference run's
#               (same prompt, same seed: sampling is deterministic per seed and position),
#               or that completed with another length
#   duplicated, missing  requests that received a token index twice / lack an index below
#               their end (bench checks every request's indices itself)
#   leaked_blocks  after the load and the settle wait: the sum of `kv_used` over every live
#               prefill and decode worker. kv_used is kv_cache::referenced(): blocks that some
#               sequence or prefill job (or a drain hold of an ended request) references; it
#               excludes unreferenced blocks kept only as cached prefixes, which are reported
#               apart (cached_prefix_blocks, from the workers' "prefix cache N blocks"). A dead
#               worker's pool died with it and is not counted.
#   per fault   at_s (s after the run's first request), in_flight then, in_flight_on_node
#               (of those, known from the summary or the error message to use the faulted
#               node), window counts (requests decided between this fault and the next),
#               recover_ms (fault -> first token after it to an in-flight request of the
#               faulted node; with migration counts, to the first migrated token), TTFT p99
#               over requests sent and ITL p99 over gaps ending in the 5 s after the fault,
#               against the same before the first fault.
#   cpu, steal  /proc/cpuinfo model name; CPU steal % over the chaos run, from /proc/stat.
#
#   scripts/bench-chaos.sh [--quick] [--manifest FILE] [--out DIR] [--rate R]
#                          [--no-relaunch] [--migration-cost]
#   --quick           ~1 minute: 128 + 64 tokens, 4 req/s for 24 s, faults at 4, 10, 16 s
#                     (default: 256 + 128 tokens, 6 req/s for 90 s, faults at 10, 30, 50 s)
#   --manifest FILE   a loopback manifest of your own (ports are rewritten to free ones);
#                     faults go to its first and second decode-only nodes and first
#                     prefill-only node
#   --migration-cost  instead: one seeded request, 512 prompt tokens and 128 output, its
#                     decode node SIGKILLed once it generated 64 tokens; its ITL across the
#                     kill and its total time against an undisturbed run (until migration
#                     lands it reports a failed request)
#   --out DIR         results folder (default bench-results/chaos-<date>)
#   TOKENMILL_BIN     the tokenmill binary (default build/apps/tokenmill)
# The last line printed is one JSON object (also DIR/summary.json); DIR/report.txt holds
# the table, DIR/*.jsonl the records, DIR/logs-*/ the node logs.
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=0 manifest_in="" out="" rate="" relaunch=1 mode=chaos
launcher_restart="as the manifest says"
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --manifest) manifest_in=${2:?--manifest needs a file}; shift ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    --rate) rate=${2:?--rate needs a number}; shift ;;
    --no-relaunch) relaunch=0 ;;
    --migration-cost) mode=migration ;;
    -h | --help) sed -n '2,73p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-chaos: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "bench-chaos: $*" >&2; }
die() { say "$*"; exit 1; }

TM_BIN=${TOKENMILL_BIN:-$repo/build/apps/tokenmill}
[[ $TM_BIN == /* ]] || TM_BIN=$PWD/$TM_BIN
[[ -x $TM_BIN ]] || die "no tokenmill binary at $TM_BIN (scripts/build.sh builds it)"
bench_help=$("$TM_BIN" bench --help 2>&1)
grep -q -- '--record' <<<"$bench_help" ||
  die "'$TM_BIN bench' has no --record option: rebuild tokenmill"
py=python3
report_py=$repo/scripts/chaos_report.py

# ---- the plan ---------------------------------------------------------------------------
seed=424242 seed_base=1000 temperature=0.8
if ((quick)); then
  input_len=128 output_len=64 duration_s=24 timeout_s=20
  : "${rate:=4}"
  fault_at=(4 10 16 22)
else
  input_len=256 output_len=128 duration_s=90 timeout_s=60
  : "${rate:=6}"
  fault_at=(10 30 50 70)
fi
[[ $rate =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--rate must be a positive number"
requests=$(awk -v r="$rate" -v d="$duration_s" 'BEGIN{n=int(r*d+0.5); print n<1?1:n}')
stop_s=3 restart_wait_s=3 settle_max_s=12

stamp=$(date +%Y%m%d-%H%M%S)
[[ -n $out ]] || out=$repo/bench-results/chaos-$stamp
mkdir -p "$out" || die "cannot create $out"
out=$(realpath "$out")
man=$out/cluster.yaml

# ---- the manifest -----------------------------------------------------------------------
free_ports() {
  "$py" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

if [[ -n $manifest_in ]]; then
  [[ -f $manifest_in ]] || die "no manifest at $manifest_in"
  "$py" "$repo/scripts/manifest_variant.py" write "$manifest_in" "$man" --config disagg \
    --free-ports >/dev/null || die "cannot rewrite $manifest_in onto free ports"
else
  read -r -a p <<<"$(free_ports 12)"
  ((${#p[@]} == 12)) || die "could not find free ports"
  cat >"$man" <<EOF
# written by scripts/bench-chaos.sh: spare capacity for faults (2 prefill, 2 decode nodes)
cluster: bench-chaos
model:
  sim: {decode_step_ms: 10, prefill_us_per_token: 200}
defaults: {engine: sim, block_tokens: 16, kv_transport: ucx}
frontend: {node: head, rpc_port: ${p[0]}, http_port: ${p[1]}}
failure: {heartbeat_ms: 200, connection_timeout_ms: 1000}
nodes:
  - {name: head, address: 127.0.0.1, port: ${p[2]}, http_port: ${p[3]}, actors: [router, supervisor, kv_store]}
  - {name: p0, address: 127.0.0.1, port: ${p[4]}, http_port: ${p[5]}, actors: [{prefill: {engine: sim, threads: 1}}]}
  - {name: p1, address: 127.0.0.1, port: ${p[6]}, http_port: ${p[7]}, actors: [{prefill: {engine: sim, threads: 1}}]}
  - {name: d0, address: 127.0.0.1, port: ${p[8]}, http_port: ${p[9]}, actors: [{decode: {engine: sim, threads: 1, max_batch: 32}}]}
  - {name: d1, address: 127.0.0.1, port: ${p[10]}, http_port: ${p[11]}, actors: [{decode: {engine: sim, threads: 1, max_batch: 32}}]}
EOF
  # Node restart by the launcher (manifest `restart:`), where this tokenmill has it.
  sed 's/^cluster: bench-chaos$/&\nrestart: {max: 5, backoff_ms: 200}/' "$man" >"$man.restart"
  if "$TM_BIN" manifest check "$man.restart" >/dev/null 2>&1; then
    mv "$man.restart" "$man"
    launcher_restart="restart: {max: 5, backoff_ms: 200}"
  else
    rm -f "$man.restart"
    launcher_restart="none (this tokenmill's manifest has no restart: key)"
  fi
fi
say "launcher restart: ${launcher_restart}"
info=$("$py" "$repo/scripts/manifest_variant.py" info "$man") || die "cannot read $man"
jq_info() { "$py" -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$info" "$1"; }
[[ $(jq_info 'all(n["local"] and not n["ssh"] for n in d["nodes"])') == True ]] ||
  die "every node must run on this machine's loopback: the faults are signals to local pids"
connect=$(jq_info '"%s:%s" % (d["frontend"]["host"], d["frontend"]["rpc_port"])')
read -r -a decode_nodes <<<"$(jq_info '" ".join(n["name"] for n in d["nodes"] if n["roles"] == ["decode"])')"
read -r -a prefill_nodes <<<"$(jq_info '" ".join(n["name"] for n in d["nodes"] if n["roles"] == ["prefill"])')"
((${#decode_nodes[@]})) || die "the manifest has no decode-only node to fault"

# ---- the cluster ------------------------------------------------------------------------
launch_pid="" bench_pid="" stopped_pid=""
declare -A own_pid=()  # nodes this script started again itself

node_pid() {  # the live process of node $1 of this run's manifest (empty: none)
  pgrep -f -- "node --manifest $man --name $1\$" | head -1
}

stop_cluster() {
  local i p
  [[ -n $stopped_pid ]] && kill -CONT "$stopped_pid" 2>/dev/null
  stopped_pid=""
  [[ -n $bench_pid ]] && { kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid" 2>/dev/null; }
  bench_pid=""
  if [[ -n $launch_pid ]] && kill -0 "$launch_pid" 2>/dev/null; then
    kill -TERM "$launch_pid" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
      kill -0 "$launch_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$launch_pid" 2>/dev/null
    wait "$launch_pid" 2>/dev/null
  fi
  launch_pid=""
  for p in "${own_pid[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for ((i = 0; i < 50; i++)); do
    [[ -z $(pgrep -f -- "node --manifest $man --name") ]] && break
    sleep 0.1
  done
  for p in $(pgrep -f -- "node --manifest $man --name"); do
    say "node process $p of this run still alive; killing it"
    kill -KILL "$p" 2>/dev/null
  done
  for p in "${own_pid[@]}"; do wait "$p" 2>/dev/null; done
  own_pid=()
}
trap stop_cluster EXIT
trap 'echo >&2; say "interrupted"; exit 130' INT TERM

# launch_cluster LABEL: starts the manifest with `tokenmill launch`, waits for its ready line.
launch_cluster() {
  local label=$1 i
  logs=$out/logs-$label
  : >"$out/launch-$label.out"
  "$TM_BIN" launch "$man" --log-dir "$logs" >"$out/launch-$label.out" 2>&1 &
  launch_pid=$!
  for ((i = 0; i < 600; i++)); do
    grep -q "^tokenmill cluster .* ready" "$out/launch-$label.out" && break
    kill -0 "$launch_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^tokenmill cluster .* ready" "$out/launch-$label.out"; then
    sed 's/^/    | /' "$out/launch-$label.out" >&2
    die "the cluster did not start ($label)"
  fi
}

status_json() { "$TM_BIN" status --connect "$connect" --json --timeout 5 2>/dev/null; }

# wait_node_up NAME SECONDS: until status shows the node and all its workers up.
wait_node_up() {
  "$py" - "$TM_BIN" "$connect" "$1" "$2" <<'EOF'
import json, subprocess, sys, time
bin_, connect, name, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
t0 = time.monotonic()
while time.monotonic() - t0 < limit:
    r = subprocess.run([bin_, "status", "--connect", connect, "--json", "--timeout", "2"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        s = json.loads(r.stdout)
        nodes = [n for n in s.get("nodes", []) if n["name"] == name]
        workers = [w for w in s.get("workers", []) if w["node"] == name]
        if nodes and all(n["up"] for n in nodes) and workers and all(w["up"] for w in workers):
            print(f"{time.monotonic() - t0:.2f}")
            sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
EOF
}

# settle LABEL FILE: polls status until no request is in flight and no worker references a
# block (or settle_max_s passed); writes the leak figures (and the last status) to FILE.
settle() {
  "$py" - "$TM_BIN" "$connect" "$settle_max_s" "$2" <<'EOF'
import json, re, subprocess, sys, time
bin_, connect, limit, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
t0 = time.monotonic()
last = None
while True:
    r = subprocess.run([bin_, "status", "--connect", connect, "--json", "--timeout", "3"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        last = json.loads(r.stdout)
        live = [w for w in last["workers"] if w["up"] and w["role"] in ("prefill", "decode")]
        busy = sum(w["queued"] + w["running"] for w in last["workers"] if w["up"])
        if busy == 0 and sum(w["kv_used"] for w in live) == 0:
            break
    if time.monotonic() - t0 >= limit:
        break
    time.sleep(0.5)
out = {"settle_s": round(time.monotonic() - t0, 2), "leaked_blocks": None,
       "what": "sum of kv_used (blocks referenced by sequences, jobs or drain holds) over live "
               "prefill and decode workers after the settle wait"}
if last:
    live = [w for w in last["workers"] if w["up"] and w["role"] in ("prefill", "decode")]
    per = []
    for w in live:
        m = re.search(r"prefix cache (\d+) blocks", w.get("detail", ""))
        per.append({"name": w["name"], "node": w["node"], "role": w["role"],
                    "kv_used": w["kv_used"], "kv_total": w["kv_total"],
                    "running": w["running"], "queued": w["queued"],
                    "cached_prefix_blocks": int(m.group(1)) if m else None,
                    "detail": w.get("detail", "")})
    out["leaked_blocks"] = sum(w["kv_used"] for w in live)
    out["cached_prefix_blocks"] = sum(p["cached_prefix_blocks"] or 0 for p in per)
    out["requests_still_in_flight"] = sum(w["queued"] for w in last["workers"]
                                          if w["up"] and w["role"] == "router")
    out["workers_down"] = [w["name"] for w in last["workers"] if not w["up"]]
    out["workers"] = per
    out["final"] = last
json.dump(out, open(path, "w"), indent=1)
print(f"leaked_blocks={out['leaked_blocks']} after {out['settle_s']} s")
EOF
}

# cpu_stat: "total busy steal" jiffies over all CPUs (as scripts/bench-multinode.sh).
cpu_stat() { awk '/^cpu /{t=$2+$3+$4+$5+$6+$7+$8+$9; print t, t-$5-$6-$9, $9; exit}' /proc/stat; }
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }

# bring_back NAME KILLED_PID: the node's way back after a fault -> "restart" text on stdout.
bring_back() {
  local name=$1 old=$2 i p t0 up
  t0=$(now_us)
  for ((i = 0; i < restart_wait_s * 10; i++)); do
    p=$(node_pid "$name")
    if [[ -n $p && $p != "$old" ]]; then
      up=$(wait_node_up "$name" 10) && { echo "launch restarted it (pid $p), up in $(awk -v a="$t0" -v b="$(now_us)" 'BEGIN{printf "%.1f", (b-a)/1e6}') s"; return; }
      echo "launch restarted it (pid $p), not up in 10 s"
      return
    fi
    sleep 0.1
  done
  if ((!relaunch)); then
    echo "not restarted (--no-relaunch)"
    return
  fi
  "$TM_BIN" node --manifest "$man" --name "$name" >>"$logs/$name.relaunch.log" 2>&1 &
  own_pid[$name]=$!
  if up=$(wait_node_up "$name" 15); then
    echo "script restarted it (pid ${own_pid[$name]}), up in $(awk -v a="$t0" -v b="$(now_us)" 'BEGIN{printf "%.1f", (b-a)/1e6}') s"
  else
    echo "script restarted it (pid ${own_pid[$name]}), not up in 15 s (log $logs/$name.relaunch.log)"
  fi
}

json_str() { "$py" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

cpu_model=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
bench_common=(--connect "$connect" --workload random --seed "$seed" --seed-base "$seed_base"
  --temperature "$temperature" --timeout "$timeout_s" --no-progress --json)

# ---- --migration-cost ---------------------------------------------------------------------
if [[ $mode == migration ]]; then
  mc=(--requests 1 --concurrency 1 --input-len 512 --output-len 128)
  say "migration cost: one request, 512 prompt + 128 output tokens; reference run"
  launch_cluster mref
  "$TM_BIN" bench "${bench_common[@]}" "${mc[@]}" --record "$out/mref.jsonl" \
    >"$out/mref-bench.json" 2>"$out/mref-bench.err" || say "the reference request failed: $(tail -1 "$out/mref-bench.err")"
  stop_cluster
  say "faulted run: SIGKILL of the request's decode node after 64 generated tokens"
  launch_cluster mrun
  # Each decode node's /metrics port: its http_port, or frontend.http_port + 1 + its index.
  read -r -a metrics_at <<<"$("$py" - "$man" "${decode_nodes[@]}" <<'EOF'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
base = (d.get("frontend") or {}).get("http_port", 8000)
for i, n in enumerate(d["nodes"]):
    if n["name"] in sys.argv[2:]:
        print(f"{n['name']}={n.get('address', '127.0.0.1')}:{n.get('http_port', base + 1 + i)}", end=" ")
EOF
)"
  s0=$(cpu_stat)
  # Which decode worker runs it, and when it has generated 64 tokens: its tokens_out in its
  # node's /metrics (HTTP GETs from this process, a few ms; a `status` command per poll
  # costs a process start and overshot by ~50 tokens). The baseline is taken before the
  # request is sent.
  "$py" - "$out/mpoll.base" "${metrics_at[@]}" >"$out/mpoll.out" 2>"$out/mpoll.err" <<'EOF' &
import re, sys, time, urllib.request
marker, where = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
line = re.compile(r'^tokenmill_worker_tokens_total\{([^}]*)\} (\S+)$', re.M)
def decode_tokens():
    out = {}
    for node, addr in where.items():
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
        for labels, v in line.findall(body):
            l = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if l.get("role") == "decode":
                out[node] = out.get(node, 0) + float(v)
    return out
base = decode_tokens()
open(marker, "w").close()
t0 = time.monotonic()
while time.monotonic() - t0 < 30:
    for node, v in decode_tokens().items():
        # the first token comes from the prefill worker, and the kill lands a few steps
        # after the poll that sees this: stop at 60 (the report counts the exact number)
        if v - base.get(node, 0) >= 60:
            print(node)
            sys.exit(0)
    time.sleep(0.002)
sys.exit(1)
EOF
  poll_pid=$!
  for ((i = 0; i < 100; i++)); do
    [[ -e $out/mpoll.base ]] && break
    kill -0 "$poll_pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -e $out/mpoll.base ]] || die "cannot read the decode nodes' /metrics (${metrics_at[*]}): $(cat "$out/mpoll.err")"
  "$TM_BIN" bench "${bench_common[@]}" "${mc[@]}" --record "$out/mrun.jsonl" \
    >"$out/mrun-bench.json" 2>"$out/mrun-bench.err" &
  bench_pid=$!
  if ! wait "$poll_pid"; then
    wait "$bench_pid"
    bench_pid=""
    die "did not see the request's decode worker reach 64 tokens: $(cat "$out/mpoll.err")"
  fi
  target=$(cat "$out/mpoll.out")
  pid=$(node_pid "$target")
  kill -KILL "$pid"
  kill_us=$(now_us)
  say "killed $target (pid $pid)"
  wait "$bench_pid"
  bench_pid=""
  s1=$(cpu_stat)
  read -r steal busy <<<"$(awk -v a="$s0" -v b="$s1" 'BEGIN{split(a,x," "); split(b,y," "); t=y[1]-x[1]; if(t<=0)t=1; printf "%.2f %.2f", 100*(y[3]-x[3])/t, 100*(y[2]-x[2])/t}')"
  stop_cluster
  printf '{"cpu": %s, "cpus": %s, "steal_pct": %s, "busy_pct": %s, "commit": "%s"}\n' \
    "$(json_str "$cpu_model")" "$(nproc)" "$steal" "$busy" "$commit" >"$out/meta.json"
  "$py" "$report_py" migration --ref "$out/mref.jsonl" --run "$out/mrun.jsonl" \
    --kill-us "$kill_us" --node "$target" --meta "$out/meta.json" | tee "$out/report.txt"
  tail -1 "$out/report.txt" >"$out/summary.json"
  exit 0
fi

# ---- 1. the reference --------------------------------------------------------------------
say "$requests requests ($input_len + $output_len tokens, seed $seed, seeds $seed_base.., temperature $temperature); results in $out"
say "reference run (undisturbed)"
launch_cluster ref
if ((quick)); then
  load_ref=(--concurrency 16) ref_load="closed loop, 16 streams"
else
  load_ref=(--rate "$rate" --max-concurrency 256) ref_load="the same rate"
fi
"$TM_BIN" bench "${bench_common[@]}" --requests "$requests" --input-len "$input_len" \
  --output-len "$output_len" "${load_ref[@]}" --record "$out/ref.jsonl" \
  >"$out/ref-bench.json" 2>"$out/ref-bench.err" || die "the reference run failed: $(tail -2 "$out/ref-bench.err")"
say "reference: $(settle ref "$out/leak-ref.json")"
stop_cluster

# ---- 2. the chaos run ----------------------------------------------------------------------
say "chaos run: $rate req/s for ~${duration_s} s, faults at ${fault_at[*]} s"
launch_cluster chaos
status_json >"$out/workers.json" || die "status failed after launch"
s0=$(cpu_stat)
"$TM_BIN" bench "${bench_common[@]}" --requests "$requests" --input-len "$input_len" \
  --output-len "$output_len" --rate "$rate" --max-concurrency 256 --record "$out/run.jsonl" \
  >"$out/run-bench.json" 2>"$out/run-bench.err" &
bench_pid=$!
t_load=$(now_us)
faults=()

sleep_until() {  # seconds after t_load
  local wait
  wait=$(awk -v t="$t_load" -v n="$(now_us)" -v o="$1" 'BEGIN{w=(t+o*1e6-n)/1e6; print (w>0?w:0)}')
  sleep "$wait"
}
fault_json() {  # fault node signal at_us until_us restart skipped
  printf '{"fault": "%s", "node": %s, "signal": %s, "at_us": %s, "until_us": %s, "restart": %s, "skipped": %s}' \
    "$1" "$(json_str "$2")" "$(json_str "$3")" "${4:-null}" "${5:-null}" \
    "$( [[ -n $6 ]] && json_str "$6" || echo null)" "$( [[ -n $7 ]] && json_str "$7" || echo null)"
}

kill_fault() {  # NAME NODE
  local name=$1 node=$2 pid at restart
  pid=$(node_pid "$node")
  if [[ -z $pid ]]; then
    faults+=("$(fault_json "$name" "$node" KILL "" "" "" "node $node has no live process")")
    return
  fi
  kill -KILL "$pid"
  at=$(now_us)
  say "$name: SIGKILL $node (pid $pid)"
  restart=$(bring_back "$node" "$pid")
  say "  $node: $restart"
  faults+=("$(fault_json "$name" "$node" KILL "$at" "" "$restart" "")")
}

stop_fault() {  # NAME NODE
  local name=$1 node=$2 pid at until restart
  pid=$(node_pid "$node")
  if [[ -z $pid ]]; then
    faults+=("$(fault_json "$name" "$node" STOP "" "" "" "node $node has no live process")")
    return
  fi
  kill -STOP "$pid"
  stopped_pid=$pid
  at=$(now_us)
  say "$name: SIGSTOP $node (pid $pid) for $stop_s s"
  sleep "$stop_s"
  kill -CONT "$pid"
  until=$(now_us)
  stopped_pid=""
  if up=$(wait_node_up "$node" 5); then
    restart="resumed, up ${up} s after SIGCONT"
  elif [[ -z $(node_pid "$node") ]]; then
    restart="exited after SIGCONT; $(bring_back "$node" "$pid")"
  else
    restart="alive, not up 5 s after SIGCONT"
  fi
  say "  $node: $restart"
  faults+=("$(fault_json "$name" "$node" STOP "$at" "$until" "$restart" "")")
}

d_kill=${decode_nodes[0]}
d_stop=${decode_nodes[1]:-${decode_nodes[0]}}
sleep_until "${fault_at[0]}"
kill_fault kill-decode "$d_kill"
sleep_until "${fault_at[1]}"
if ((${#prefill_nodes[@]})); then
  kill_fault kill-prefill "${prefill_nodes[0]}"
else
  faults+=("$(fault_json kill-prefill "" KILL "" "" "" "the manifest has no prefill-only node")")
fi
sleep_until "${fault_at[2]}"
stop_fault stop-decode "$d_stop"
if (($(id -u) != 0)); then
  why="not root: a link cut needs network namespaces"
elif ! command -v ip >/dev/null; then
  why="no 'ip' command: a link cut needs network namespaces"
else
  why="not implemented: a cut needs the node in a network namespace of its own, which 'tokenmill launch' cannot start (all nodes here share the loopback); scripts/bench-failure.sh --only cut measures a cut in the netns 3-host cluster"
fi
say "link-cut: skipped ($why)"
faults+=("$(fault_json link-cut "$d_kill" "" "" "" "" "$why")")

say "waiting for the load to end (requests that hang end at the ${timeout_s} s timeout)"
wait "$bench_pid"
brc=$?
bench_pid=""
s1=$(cpu_stat)
((brc == 0)) || say "bench exited $brc: $(tail -2 "$out/run-bench.err")"
[[ -s $out/run.jsonl ]] || die "the chaos run wrote no records"
say "after the load: $(settle chaos "$out/leak.json")"
stop_cluster

{
  echo "["
  for ((k = 0; k < ${#faults[@]}; k++)); do
    echo "  ${faults[$k]}$( ((k + 1 < ${#faults[@]})) && echo ,)"
  done
  echo "]"
} >"$out/faults.json"
read -r steal busy <<<"$(awk -v a="$s0" -v b="$s1" 'BEGIN{split(a,x," "); split(b,y," "); t=y[1]-x[1]; if(t<=0)t=1; printf "%.2f %.2f", 100*(y[3]-x[3])/t, 100*(y[2]-x[2])/t}')"
cat >"$out/meta.json" <<EOF
{"cpu": $(json_str "$cpu_model"), "cpus": $(nproc), "steal_pct": $steal, "busy_pct": $busy,
 "rate": $rate, "requests": $requests, "input_len": $input_len, "output_len": $output_len,
 "temperature": $temperature, "seed": $seed, "seed_base": $seed_base, "timeout_s": $timeout_s,
 "quick": $( ((quick)) && echo true || echo false), "reference_load": $(json_str "$ref_load"), "manifest": $(json_str "${manifest_in:-generated}"),
 "launcher_restart": $(json_str "$launcher_restart"), "script_relaunch": $( ((relaunch)) && echo true || echo false),
 "commit": "$commit", "out": $(json_str "$out")}
EOF
"$py" "$report_py" chaos --ref "$out/ref.jsonl" --run "$out/run.jsonl" --faults "$out/faults.json" \
  --workers "$out/workers.json" --leak "$out/leak.json" --meta "$out/meta.json" >"$out/report.txt" ||
  die "chaos_report.py failed"
tail -1 "$out/report.txt" >"$out/summary.json"
cat "$out/report.txt"
