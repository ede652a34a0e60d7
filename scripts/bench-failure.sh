#!/usr/bin/env bash
# Failure detection: how long after a decode node fails does a streaming client get its
# error, and how long until `tokenmill status` shows the node down? Three faults, each on a
# fresh 3-node cluster (head: router+supervisor+kv_store, p0: prefill, d0: decode; sim
# engine, 10 ms decode steps; CAF heartbeat 200 ms, connection timeout 1000 ms):
#   kill  SIGKILL of d0's process (loopback cluster started with `tokenmill launch`)
#   stop  SIGSTOP of d0's process (same; the process hangs with its sockets open)
#   cut   d0's link cut in the network-namespace setup (scripts/netns-3host.sh --cut);
#         skipped with a message when namespaces are unavailable (not root, no `ip`, ...)
# Each fault happens while a long generate streams. Times are from the moment the fault
# command returned: to the client process's exit (stamped when `wait` returns), to the
# first `status --json` reply showing d0 down (a status call is started every 20 ms; they
# may overlap), and to the supervisor's "node 'd0' is down" log line (1 ms resolution).
#
#   scripts/bench-failure.sh [--runs N] [--only kill|stop|cut]   (default 5 runs each)
#   TOKENMILL_BIN=path   tokenmill binary (default build/apps/tokenmill)
# Writes bench-results/failure/failure-<time>.json and .txt (the table).
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# tm_measure_fault and tm_now.
# shellcheck source=scripts/netns-3host.sh
source "$repo/scripts/netns-3host.sh"

runs=5 only=""
while (($#)); do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --only) only=${2:?--only needs kill, stop or cut}; shift ;;
    -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-failure: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[[ $runs =~ ^[1-9][0-9]?$ ]] || { echo "bench-failure: --runs must be 1..99" >&2; exit 2; }

TM_BIN=${TOKENMILL_BIN:-$repo/build/apps/tokenmill}
[[ $TM_BIN == /* ]] || TM_BIN=$PWD/$TM_BIN
[[ -x $TM_BIN ]] || { echo "bench-failure: no tokenmill binary at $TM_BIN" >&2; exit 1; }
export TOKENMILL_BIN=$TM_BIN

out_dir=$repo/bench-results/failure
mkdir -p "$out_dir"
stamp=$(date +%Y%m%d-%H%M%S)
json=$out_dir/failure-$stamp.json
table=$out_dir/failure-$stamp.txt
work=$(mktemp -d /tmp/tokenmill-bench-failure.XXXXXX)
launch_pid="" d0_pid="" d0_stopped=0

say() { echo "bench-failure: $*"; }

stop_cluster() {
  local i
  # A stopped d0 would make launch wait out its 10 s grace period.
  [[ -n $d0_pid && $d0_stopped == 1 ]] && kill -KILL "$d0_pid" 2>/dev/null
  if [[ -n $launch_pid ]] && kill -0 "$launch_pid" 2>/dev/null; then
    kill -TERM "$launch_pid" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
      kill -0 "$launch_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$launch_pid" 2>/dev/null; then
      say "launch (pid $launch_pid) did not stop within 15 s; killing it and its nodes"
      for p in $(grep -o 'starting (pid [0-9]*' "$work/launch.out" | grep -o '[0-9]*$'); do
        kill -KILL "$p" 2>/dev/null
      done
      kill -KILL "$launch_pid" 2>/dev/null
    fi
    wait "$launch_pid" 2>/dev/null
  fi
  launch_pid="" d0_pid="" d0_stopped=0
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Starts a loopback 3-node cluster on free ports; sets launch_pid, d0_pid, TM_CONNECT.
start_cluster() {
  local run_dir=$1 ports i
  read -r -a ports <<<"$(free_ports 5)" || return 1
  ((${#ports[@]} == 5)) || { say "could not find free ports"; return 1; }
  cat >"$run_dir/cluster.yaml" <<EOF
cluster: bench-failure
model:
  sim: {decode_step_ms: 10, prefill_us_per_token: 200}
defaults: {engine: sim, block_tokens: 16, kv_transport: inline}
frontend: {node: head, rpc_port: ${ports[0]}, http_port: ${ports[1]}}
failure: {heartbeat_ms: 200, connection_timeout_ms: 1000}
nodes:
  - {name: head, address: 127.0.0.1, port: ${ports[2]}, actors: [router, supervisor, kv_store]}
  - {name: p0, address: 127.0.0.1, port: ${ports[3]}, actors: [{prefill: {engine: sim, threads: 1}}]}
  - {name: d0, address: 127.0.0.1, port: ${ports[4]}, actors: [{decode: {engine: sim, threads: 1, max_batch: 32}}]}
EOF
  "$TM_BIN" launch "$run_dir/cluster.yaml" --log-dir "$run_dir/logs" >"$work/launch.out" 2>&1 &
  launch_pid=$!
  for ((i = 0; i < 300; i++)); do
    grep -q "^tokenmill cluster .* ready" "$work/launch.out" && break
    kill -0 "$launch_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^tokenmill cluster .* ready" "$work/launch.out"; then
    say "the cluster did not start:"
    sed 's/^/    | /' "$work/launch.out"
    stop_cluster
    return 1
  fi
  d0_pid=$(sed -n 's/^launch: node d0 *starting (pid \([0-9]*\)).*/\1/p' "$work/launch.out")
  [[ -n $d0_pid ]] || { say "cannot find d0's pid in the launch output"; stop_cluster; return 1; }
  TM_CONNECT=127.0.0.1:${ports[0]}
  TM_EXEC=()
}

# ms from the fault (epoch us) to the supervisor's "node 'd0' is down" log line, or none.
supervisor_ms() {
  local log=$1 fault_us=$2 line ts us
  line=$(grep -m1 "supervisor: node 'd0' is down" "$log" 2>/dev/null) || { echo none; return; }
  ts=$(sed -n 's/^\[\([0-9-]* [0-9:.]*\)\].*/\1/p' <<<"$line")
  us=$(date -d "$ts" +%s%6N 2>/dev/null) || { echo none; return; }
  awk -v a="$fault_us" -v b="$us" 'BEGIN{printf "%.1f", (b-a)/1000}'
}

json_str() { printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1")"; }

rows=()  # "mode run client_ms status_ms supervisor_ms client_rc last_up_ms" (tab-separated + err)
record() {
  local mode=$1 run=$2 cms=$3 sms=$4 sup=$5 rc=$6 up=$7 err=$8
  rows+=("$mode"$'\t'"$run"$'\t'"$cms"$'\t'"$sms"$'\t'"$sup"$'\t'"$rc"$'\t'"$up"$'\t'"$err")
  printf 'bench-failure: %-4s run %d: client error %8s ms, status down %8s ms (last up-poll start %s), supervisor log %8s ms, client exit %s: %s\n' \
    "$mode" "$run" "$cms" "$sms" "$up" "$sup" "$rc" "${err:-no error message}"
}

local_fault() {
  local mode=$1 signal=$2 r run_dir fault_us
  for ((r = 1; r <= runs; r++)); do
    run_dir=$work/$mode-$r
    mkdir -p "$run_dir"
    start_cluster "$run_dir" || { record "$mode" "$r" none none none none none "cluster did not start"; continue; }
    fault_now() {
      [[ $signal == STOP ]] && d0_stopped=1
      kill "-$signal" "$d0_pid"
    }
    if tm_measure_fault "$run_dir" d0 fault_now; then
      fault_us=$TM_R_FAULT_US
      record "$mode" "$r" "$TM_R_CLIENT_MS" "$TM_R_STATUS_MS" \
        "$(supervisor_ms "$run_dir/logs/head.log" "$fault_us")" "$TM_R_CLIENT_RC" \
        "$TM_R_LAST_UP_MS" "$TM_R_CLIENT_ERR"
    else
      record "$mode" "$r" none none none none none "generate did not stream"
    fi
    stop_cluster
  done
}

netns_available() {
  (($(id -u) == 0)) || { netns_why="not root"; return 1; }
  command -v ip >/dev/null || { netns_why="the 'ip' command is missing"; return 1; }
  local probe=tm-bench-probe-$$ err
  if ! err=$(ip netns add "$probe" 2>&1); then
    netns_why="'ip netns add' failed: $err"
    return 1
  fi
  ip netns del "$probe" 2>/dev/null
  return 0
}

cut_fault() {
  local r run_dir out line cms sms up rc fault_us err
  if ! netns_available; then
    say "cut: SKIPPED, network namespaces are unavailable ($netns_why)"
    cut_skipped=$netns_why
    return 0
  fi
  for ((r = 1; r <= runs; r++)); do
    run_dir=$work/cut-$r
    out=$("$repo/scripts/netns-3host.sh" --cut --once --log-dir "$run_dir" 2>&1)
    line=$(grep -m1 '^CUT_RESULT ' <<<"$out")
    if [[ -z $line ]]; then
      say "cut run $r failed:"
      sed 's/^/    | /' <<<"$out" | tail -20
      record cut "$r" none none none none none "netns-3host.sh failed"
      continue
    fi
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    cms=$(field client_error_ms) sms=$(field status_down_ms) up=$(field status_last_up_ms)
    rc=$(field client_rc) fault_us=$(field fault_at_us)
    err=$(sed -n 's/^netns-3host: cut: client exited after .*): //p' <<<"$out" | head -1)
    record cut "$r" "$cms" "$sms" "$(supervisor_ms "$run_dir/head.log" "$fault_us")" "$rc" "$up" "$err"
  done
}

median() {  # numbers on stdin ("none" ignored) -> median or none
  grep -E '^[0-9.]+$' | sort -g | awk '{v[NR]=$1} END{if(NR==0){print "none"; exit}
    if(NR%2) printf "%.1f\n", v[(NR+1)/2]; else printf "%.1f\n", (v[NR/2]+v[NR/2+1])/2}'
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
t_begin=$SECONDS
cut_skipped=""
say "$runs runs per fault; binary $TM_BIN; $(nproc) CPUs, load average $load_before"
[[ -z $only || $only == kill ]] && { say "kill: SIGKILL d0 (loopback cluster)"; local_fault kill KILL; }
[[ -z $only || $only == stop ]] && { say "stop: SIGSTOP d0 (loopback cluster)"; local_fault stop STOP; }
[[ -z $only || $only == cut ]] && { say "cut: d0's link down (network namespaces)"; cut_fault; }
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# The table.
{
  echo "failure detection, ms after the fault (heartbeat 200 ms, connection timeout 1000 ms)"
  echo "machine: $(nproc) CPUs, load average before $load_before, after $load_after"
  printf '%-5s %4s %14s %14s %15s %6s  %s\n' fault run client_error status_down supervisor_log rc "client error"
  for row in "${rows[@]}"; do
    IFS=$'\t' read -r m r c s sup rc up err <<<"$row"
    printf '%-5s %4s %14s %14s %15s %6s  %s\n' "$m" "$r" "$c" "$s" "$sup" "$rc" "$err"
  done
  echo
  printf '%-5s %4s %14s %14s %15s\n' fault runs "median client" "median status" "median superv."
  for m in kill stop cut; do
    sel=()
    for row in "${rows[@]}"; do [[ $row == "$m"$'\t'* ]] && sel+=("$row"); done
    ((${#sel[@]})) || continue
    printf '%-5s %4s %14s %14s %15s\n' "$m" "${#sel[@]}" \
      "$(printf '%s\n' "${sel[@]}" | cut -f3 | median)" \
      "$(printf '%s\n' "${sel[@]}" | cut -f4 | median)" \
      "$(printf '%s\n' "${sel[@]}" | cut -f5 | median)"
  done
  [[ -n $cut_skipped ]] && echo "cut: skipped ($cut_skipped)"
} >"$table"
echo
cat "$table"

# The JSON.
num() { [[ $1 =~ ^[0-9.]+$ ]] && echo "$1" || echo null; }
{
  echo "{"
  echo "  \"benchmark\": \"failure-detection\","
  echo "  \"date\": $(json_str "$(date -Is)"),"
  echo "  \"binary\": $(json_str "$TM_BIN"),"
  echo "  \"config\": {\"heartbeat_ms\": 200, \"connection_timeout_ms\": 1000, \"decode_step_ms\": 10, \"status_poll_ms\": 20, \"runs\": $runs},"
  echo "  \"machine\": {\"cpus\": $(nproc), \"loadavg_before\": $(json_str "$load_before"), \"loadavg_after\": $(json_str "$load_after")},"
  echo "  \"definitions\": {\"client_error_ms\": \"fault command returned -> generate client process exited\", \"status_down_ms\": \"-> first status reply showing d0 down\", \"status_last_up_start_ms\": \"start of the last poll, begun before that one, still showing d0 up\", \"supervisor_log_ms\": \"-> supervisor log line: node d0 is down (1 ms resolution)\"},"
  echo "  \"runs\": ["
  n=${#rows[@]} i=0
  for row in "${rows[@]}"; do
    IFS=$'\t' read -r m r c s sup rc up err <<<"$row"
    i=$((i + 1))
    printf '    {"fault": "%s", "run": %s, "client_error_ms": %s, "status_down_ms": %s, "status_last_up_start_ms": %s, "supervisor_log_ms": %s, "client_exit_code": %s, "client_error": %s}%s\n' \
      "$m" "$r" "$(num "$c")" "$(num "$s")" "$(num "$up")" "$(num "$sup")" "$(num "$rc")" "$(json_str "$err")" \
      "$( ((i < n)) && echo ,)"
  done
  echo "  ],"
  echo "  \"medians\": {"
  first=1
  for m in kill stop cut; do
    sel=()
    for row in "${rows[@]}"; do [[ $row == "$m"$'\t'* ]] && sel+=("$row"); done
    ((${#sel[@]})) || continue
    ((first)) || echo ","
    first=0
    printf '    "%s": {"client_error_ms": %s, "status_down_ms": %s, "supervisor_log_ms": %s}' "$m" \
      "$(num "$(printf '%s\n' "${sel[@]}" | cut -f3 | median)")" \
      "$(num "$(printf '%s\n' "${sel[@]}" | cut -f4 | median)")" \
      "$(num "$(printf '%s\n' "${sel[@]}" | cut -f5 | median)")"
  done
  echo
  echo "  },"
  echo "  \"cut_skipped\": $([[ -n $cut_skipped ]] && json_str "$cut_skipped" || echo null)"
  echo "}"
} >"$json"
say "took $((SECONDS - t_begin)) s; wrote $json and $table"
