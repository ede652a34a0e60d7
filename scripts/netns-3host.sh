#!/usr/bin/env bash
# A three-"host" tokenmill cluster on one machine, each node in its own network namespace
# (examples/netns-3host.yaml): tm-h0 (head: router, supervisor, kv_store, frontend rpc
# 10.77.0.1:7700), tm-p0 (prefill, 10.77.0.2) and tm-d0 (decode, 10.77.0.3), joined by veth
# pairs to a bridge in a fourth namespace, tm-br. No interface is created in the root
# namespace; everything is deleted on exit (also on errors and Ctrl-C). Needs root.
#
#   scripts/netns-3host.sh                serve until Ctrl-C (connect from tm-h0)
#   scripts/netns-3host.sh --once         exit after the first generate
#   scripts/netns-3host.sh --cut [--once] start a long generate, cut d0's link, report how
#                                         long until the client got its error and until
#                                         status showed d0 down
#   --log-dir DIR                         keep node logs there (default: a temporary folder,
#                                         removed on exit unless something failed)
#   TOKENMILL_BIN=path                    tokenmill binary (default build/apps/tokenmill)
#
# With --cut it prints one machine-readable line:
#   CUT_RESULT client_error_ms=<ms|none> client_rc=<rc> status_down_ms=<ms|none>
#              status_last_up_ms=<ms|none> tokens_before_fault=<n> fault_at_us=<epoch us>
# (times from the moment `ip link set eth0 down` returned in tm-d0).
#
# Sourcing this file (instead of running it) only defines tm_measure_fault, which
# scripts/bench-failure.sh uses for its loopback measurements.

# ---------------------------------------------------------------------------------------------
# Shared: measure one fault.
# ---------------------------------------------------------------------------------------------

# tm_now VAR: sets VAR to microseconds since the epoch, without forking (bash 5).
tm_now() {
  local t=$EPOCHREALTIME
  printf -v "$1" '%s' "${t/[.,]/}"
}

# tm_measure_fault WORKDIR NODE FAULT_COMMAND...
#   Starts a long generate (TM_EXEC prefix, TM_BIN, TM_CONNECT), waits until it streams,
#   runs FAULT_COMMAND (a shell command or function), then starts a `status --json` every
#   TM_POLL_MS (20) ms (overlapping: one blocked call does not delay the next) until the
#   client exited and a reply showed no worker of NODE up, or TM_FAULT_DEADLINE_S (10) s
#   passed. Results, in ms after the fault command returned: TM_R_CLIENT_MS (the client
#   process's exit, or none), TM_R_CLIENT_RC, TM_R_CLIENT_ERR (its error line),
#   TM_R_STATUS_MS (the earliest status reply showing NODE down, or none), TM_R_LAST_UP_MS
#   (the start of the last poll, begun before that one, that still showed NODE up: the
#   supervisor changed its mind between the two starts); also TM_R_TOKENS (bytes of text
#   streamed before the fault), TM_R_FAULT_CMD_MS (how long the fault command took) and
#   TM_R_POLLS (status calls made), TM_R_FAULT_US (the fault's epoch us). WORKDIR/polls.txt: one line per status call, its start
#   and end in ms after the fault and up|down|error.
tm_measure_fault() {
  local work=$1 node=$2
  shift 2
  local poll_ms=${TM_POLL_MS:-20} deadline_s=${TM_FAULT_DEADLINE_S:-10}
  local gen_out=$work/gen.out gen_err=$work/gen.err gen_done=$work/gen.done gen_pid=$work/gen.pid
  rm -f "$gen_out" "$gen_err" "$gen_done" "$gen_pid" "$work/polls.txt" "$work/polls.raw"
  # The client in a subshell that stamps its exit the moment `wait` returns.
  (
    "${TM_EXEC[@]}" "$TM_BIN" generate --connect "$TM_CONNECT" --max-tokens 4000 --ignore-eos \
      --timeout 120 "a long request that the fault will interrupt" >"$gen_out" 2>"$gen_err" 9>&- &
    echo $! >"$gen_pid"
    wait $!
    rc=$? t=$EPOCHREALTIME
    echo "$rc ${t/[.,]/}" >"$gen_done.tmp" && mv "$gen_done.tmp" "$gen_done"
  ) &
  local sub=$! i
  # Wait until tokens stream (bounded: 10 s), then let it run a little longer.
  for ((i = 0; i < 500; i++)); do
    [[ -s $gen_out || -e $gen_done ]] && break
    sleep 0.02
  done
  if [[ ! -s $gen_out ]]; then
    echo "tm_measure_fault: the generate never streamed a token:" >&2
    cat "$gen_err" >&2
    [[ -e $gen_pid ]] && kill -KILL "$(cat "$gen_pid")" 2>/dev/null
    wait "$sub" 2>/dev/null
    return 1
  fi
  sleep "${TM_PRE_FAULT_S:-0.3}"
  TM_R_TOKENS=$(stat -c %s "$gen_out")
  # The fault.
  local t_before t_fault
  tm_now t_before
  "$@"
  tm_now t_fault
  TM_R_FAULT_US=$t_fault
  TM_R_FAULT_CMD_MS=$(awk -v a="$t_before" -v b="$t_fault" 'BEGIN{printf "%.2f", (b-a)/1000}')
  # Poll status every poll_ms until the node shows down and the client is gone. The polls
  # overlap: a status call can block for up to a second while a peer is unreachable (the
  # supervisor waits for every member it believes up), and serial polls would measure that
  # wait rather than the detection. At most 64 polls are in flight.
  TM_R_CLIENT_MS=none TM_R_CLIENT_RC=none TM_R_CLIENT_ERR="" TM_R_STATUS_MS=none
  TM_R_LAST_UP_MS=none TM_R_POLLS=0
  local raw=$work/polls.raw client_us="" now next launched=0 down_seen=0 lines=() p
  local end_us=$((t_fault + deadline_s * 1000000))
  : >"$raw"
  next=$t_fault
  for ((i = 0; i < deadline_s * 1000 / poll_ms + 1; i++)); do
    if [[ -z $client_us && -e $gen_done ]]; then
      read -r TM_R_CLIENT_RC client_us <"$gen_done"
    fi
    mapfile -t lines <"$raw"
    ((down_seen == 0)) && [[ ${lines[*]} == *down* ]] && down_seen=1
    [[ -n $client_us ]] && ((down_seen)) && break
    if ((down_seen == 0 && launched - ${#lines[@]} < 64)); then
      (
        a=$EPOCHREALTIME
        out=$("${TM_EXEC[@]}" "$TM_BIN" status --connect "$TM_CONNECT" --json --timeout 3 2>&1 9>&-)
        rc=$? b=$EPOCHREALTIME v=error
        if ((rc == 0)); then
          v=down
          [[ $out == *"\"node\":\"$node\",\"up\":true"* ]] && v=up
        fi
        echo "${a/[.,]/} ${b/[.,]/} $v" >>"$raw"
      ) &
      launched=$((launched + 1))
    fi
    tm_now now
    ((now > end_us)) && break
    next=$((next + poll_ms * 1000))
    if ((next > now)); then
      local d=$((next - now)) sl
      printf -v sl '%d.%06d' $((d / 1000000)) $((d % 1000000))
      sleep "$sl"
    else
      next=$now
    fi
  done
  if [[ -z $client_us && -e $gen_done ]]; then
    read -r TM_R_CLIENT_RC client_us <"$gen_done"
  fi
  if [[ -z $client_us && -e $gen_pid ]]; then
    kill -KILL "$(cat "$gen_pid")" 2>/dev/null
  fi
  # Let the polls in flight finish (each gives up after 3 s).
  for ((i = 0; i < 200; i++)); do
    mapfile -t lines <"$raw"
    ((${#lines[@]} >= launched)) && break
    sleep 0.02
  done
  TM_R_POLLS=$launched
  # Earliest reply showing the node down; the latest start of a poll (begun before that
  # one) that still showed it up brackets the moment the supervisor's view changed.
  local first_down_end="" first_down_start="" last_up_start="" a b v
  for p in "${lines[@]}"; do
    read -r a b v <<<"$p"
    if [[ $v == down ]] && { [[ -z $first_down_end ]] || ((b < first_down_end)); }; then
      first_down_end=$b first_down_start=$a
    fi
  done
  for p in "${lines[@]}"; do
    read -r a b v <<<"$p"
    [[ $v == up ]] || continue
    [[ -n $first_down_start ]] && ((a >= first_down_start)) && continue
    if [[ -z $last_up_start ]] || ((a > last_up_start)); then last_up_start=$a; fi
  done
  ms() { awk -v a="$t_fault" -v b="$1" 'BEGIN{printf "%.1f", (b-a)/1000}'; }
  [[ -n $client_us ]] && TM_R_CLIENT_MS=$(ms "$client_us")
  [[ -n $first_down_end ]] && TM_R_STATUS_MS=$(ms "$first_down_end")
  [[ -n $last_up_start ]] && TM_R_LAST_UP_MS=$(ms "$last_up_start")
  TM_R_CLIENT_ERR=$(grep -m1 'tokenmill generate' "$gen_err" 2>/dev/null || true)
  # A readable copy: start and end (ms after the fault) and the verdict, by start time.
  for p in "${lines[@]}"; do
    read -r a b v <<<"$p"
    echo "$(((a - t_fault) / 1000)) $(((b - t_fault) / 1000)) $v"
  done | sort -n >"$work/polls.txt"
  wait "$sub" 2>/dev/null
  return 0
}

# Sourced: stop here.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  return 0
fi

# ---------------------------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------------------------
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
once=0 cut=0 log_dir="" keep_logs=0
while (($#)); do
  case "$1" in
    --once) once=1 ;;
    --cut) cut=1 ;;
    --log-dir) log_dir=${2:?--log-dir needs a folder}; keep_logs=1; shift ;;
    -h | --help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "netns-3host: unknown argument '$1' (expected --once, --cut, --log-dir DIR)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "netns-3host: $*"; }
die() { echo "netns-3host: error: $*" >&2; exit 1; }

TM_BIN=${TOKENMILL_BIN:-$repo/build/apps/tokenmill}
manifest=$repo/examples/netns-3host.yaml
[[ $TM_BIN == /* ]] || TM_BIN=$PWD/$TM_BIN
[[ -x $TM_BIN ]] || die "no tokenmill binary at $TM_BIN (build it, or set TOKENMILL_BIN)"
[[ -r $manifest ]] || die "missing manifest $manifest"
(($(id -u) == 0)) || die "must run as root: network namespaces and veth pairs need CAP_NET_ADMIN/CAP_SYS_ADMIN (try: sudo $0)"
command -v ip >/dev/null || die "the 'ip' command (iproute2) is not installed"

namespaces=(tm-h0 tm-p0 tm-d0 tm-br)
nodes=(head p0 d0)
declare -A node_ns=([head]=tm-h0 [p0]=tm-p0 [d0]=tm-d0)
declare -A node_addr=([head]=10.77.0.1 [p0]=10.77.0.2 [d0]=10.77.0.3)
declare -A node_pid=()
TM_CONNECT=10.77.0.1:7700
TM_EXEC=(ip netns exec tm-h0)
failed=1

# One instance at a time: the namespace names are fixed.
lock=/run/lock/tokenmill-netns-3host.lock
[[ -d /run/lock && -w /run/lock ]] || lock=/tmp/tokenmill-netns-3host.lock
exec 9>"$lock" || die "cannot open the lock file $lock"
flock -n 9 || die "another netns-3host.sh is running (lock $lock held)"

if [[ -z $log_dir ]]; then
  log_dir=$(mktemp -d /tmp/tokenmill-netns-3host.XXXXXX) || die "mktemp failed"
fi
mkdir -p "$log_dir" || die "cannot create $log_dir"

# Stops a process we started: SIGTERM, up to 5 s, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "netns-3host: pid $pid did not stop within 5 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null
}

teardown() {
  local rc=$? ns pid
  trap - EXIT INT TERM
  echo "netns-3host: tearing down"
  for n in "${nodes[@]}"; do
    [[ -n ${node_pid[$n]:-} ]] && stop_pid "${node_pid[$n]}"
  done
  wait 2>/dev/null
  for ns in "${namespaces[@]}"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    # Anything still inside is one of ours (started by this script).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null || echo "netns-3host: could not delete namespace $ns" >&2
  done
  if ((keep_logs == 0 && failed == 0 && rc == 0)); then
    rm -rf "$log_dir"
  else
    rmdir "$log_dir" 2>/dev/null || echo "netns-3host: node logs kept in $log_dir"
  fi
  echo "netns-3host: namespaces deleted (tm-h0 tm-p0 tm-d0 tm-br)"
  exit "$rc"
}
trap teardown EXIT
trap 'echo; echo "netns-3host: interrupted"; failed=0; exit 0' INT TERM

# Leftovers of a run that was killed before it could clean up (we hold the lock).
for ns in "${namespaces[@]}"; do
  if ip netns list 2>/dev/null | grep -qw "^$ns"; then
    say "removing namespace $ns left over from an earlier run"
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" || die "cannot delete leftover namespace $ns"
  fi
done

# Runs `ip ARGS`; on failure exits with the command and its message.
run_ip() {
  local err
  if ! err=$(ip "$@" 2>&1); then
    die "'ip $*' failed: $err"
  fi
}

say "creating namespaces ${namespaces[*]} (bridge br0 in tm-br, one veth pair per host)"
for ns in "${namespaces[@]}"; do
  err=$(ip netns add "$ns" 2>&1) ||
    die "'ip netns add $ns' failed: $err (network namespaces need root and kernel support)"
done
run_ip -n tm-br link set lo up
run_ip -n tm-br link add br0 type bridge
run_ip -n tm-br link set br0 up
for n in "${nodes[@]}"; do
  ns=${node_ns[$n]}
  # Both ends are created directly in their namespaces: nothing appears in the root one.
  run_ip -n tm-br link add "v-$n" type veth peer name eth0 netns "$ns"
  run_ip -n tm-br link set "v-$n" master br0 up
  run_ip -n "$ns" link set lo up
  run_ip -n "$ns" addr add "${node_addr[$n]}/24" dev eth0
  run_ip -n "$ns" link set eth0 up
  say "  $ns: eth0 ${node_addr[$n]}/24 <-> tm-br v-$n (br0), lo up"
done

# The example's nodes are on three "hosts": mutual TLS and the cluster secret (security:
# {tls: auto, secret_file: certs/secret}). The manifest is copied beside a fresh CA and node
# certificates in the log folder; every node reads them from there.
cp "$manifest" "$log_dir/netns-3host.yaml" || die "cannot copy $manifest to $log_dir"
manifest=$log_dir/netns-3host.yaml
err=$("$TM_BIN" certs init "$log_dir/certs" --manifest "$manifest" 2>&1 9>&-) ||
  die "tokenmill certs init failed: $err"
say "TLS between nodes: CA and node certificates in $log_dir/certs"

# UCX would use shared memory between the namespaces (one machine): force tcp over the veth.
say "starting the nodes: ip netns exec NS env UCX_TLS=tcp UCX_NET_DEVICES=eth0 $TM_BIN node --manifest $manifest --name N"
for n in "${nodes[@]}"; do
  ns=${node_ns[$n]}
  ip netns exec "$ns" env UCX_TLS=tcp UCX_NET_DEVICES=eth0 "$TM_BIN" node --manifest "$manifest" --name "$n" \
    >"$log_dir/$n.log" 2>&1 9>&- &
  node_pid[$n]=$!
  say "  node $n in $ns (pid ${node_pid[$n]}), log $log_dir/$n.log"
done

tm_now t_start
# Every node joins (its log says ready), then the cluster reports ready. Bounded: 30 s.
for n in "${nodes[@]}"; do
  for ((i = 0; i < 300; i++)); do
    grep -q "tokenmill node ready" "$log_dir/$n.log" 2>/dev/null && break
    if ! kill -0 "${node_pid[$n]}" 2>/dev/null; then
      echo "netns-3host: node $n exited before it was ready; its log:" >&2
      sed 's/^/    | /' "$log_dir/$n.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  grep -q "tokenmill node ready" "$log_dir/$n.log" ||
    { sed 's/^/    | /' "$log_dir/$n.log" >&2; die "node $n not ready within 30 s"; }
done
ready=0
for ((i = 0; i < 100; i++)); do
  st=$(ip netns exec tm-h0 "$TM_BIN" status --connect "$TM_CONNECT" --json --timeout 2 2>&1 9>&-)
  if [[ $st == *'"ready":true'* ]]; then ready=1; break; fi
  sleep 0.1
done
((ready)) || die "the cluster did not report ready within 10 s after every node joined: $st"
tm_now t_ready
say "cluster netns-3host ready after $(awk -v a="$t_start" -v b="$t_ready" 'BEGIN{printf "%.2f", (b-a)/1e6}') s: rpc=$TM_CONNECT (from inside tm-h0)"
ip netns exec tm-h0 "$TM_BIN" status --connect "$TM_CONNECT" 9>&- | sed 's/^/    /'

say "generate from tm-h0: tokenmill generate --connect $TM_CONNECT --max-tokens 16 'Hello from three hosts'"
gen=$(ip netns exec tm-h0 "$TM_BIN" generate --connect "$TM_CONNECT" --max-tokens 16 \
  --timeout 30 "Hello from three hosts" 2>&1 9>&-)
grc=$?
echo "$gen" | sed 's/^/    /'
((grc == 0)) || die "the generate failed (exit $grc)"
summary=$(echo "$gen" | grep -E '^[0-9]+ tokens, finish:' | head -1)
[[ -n $summary ]] || die "the generate printed no summary line"
say "completion received: $summary"

if ((cut)); then
  say "cut: starting a long generate from tm-h0 (4000 tokens, 10 ms per step)"
  cut_d0() { ip -n tm-d0 link set eth0 down; }
  TM_PRE_FAULT_S=0.5
  if ! tm_measure_fault "$log_dir" d0 cut_d0; then
    die "cut: the long generate did not start"
  fi
  say "cut: d0's link cut: 'ip -n tm-d0 link set eth0 down' (took $TM_R_FAULT_CMD_MS ms) after $TM_R_TOKENS bytes of streamed text"
  if [[ $TM_R_CLIENT_MS == none ]]; then
    say "cut: the client got NO error within ${TM_FAULT_DEADLINE_S:-10} s"
  else
    say "cut: client exited after $TM_R_CLIENT_MS ms (exit code $TM_R_CLIENT_RC): ${TM_R_CLIENT_ERR:-no error message}"
  fi
  if [[ $TM_R_STATUS_MS == none ]]; then
    say "cut: status did NOT show d0 down within ${TM_FAULT_DEADLINE_S:-10} s ($TM_R_POLLS polls)"
  else
    say "cut: status showed d0 down after $TM_R_STATUS_MS ms (the last poll still showing it up started at $TM_R_LAST_UP_MS ms; $TM_R_POLLS polls, one started every ${TM_POLL_MS:-20} ms)"
  fi
  echo "CUT_RESULT client_error_ms=$TM_R_CLIENT_MS client_rc=$TM_R_CLIENT_RC status_down_ms=$TM_R_STATUS_MS status_last_up_ms=$TM_R_LAST_UP_MS tokens_before_fault=$TM_R_TOKENS fault_at_us=$TM_R_FAULT_US"
fi

failed=0
if ((once)); then
  say "done (--once)"
  exit 0
fi

say "serving; connect from tm-h0, e.g.:"
say "  ip netns exec tm-h0 $TM_BIN generate --connect $TM_CONNECT 'Hello'"
say "Ctrl-C stops every node and deletes the namespaces"
# Until Ctrl-C, or until every node has exited.
for ((;;)); do
  alive=0
  for n in "${nodes[@]}"; do
    kill -0 "${node_pid[$n]}" 2>/dev/null && alive=$((alive + 1))
  done
  if ((alive == 0)); then
    say "every node has exited"
    failed=1
    exit 1
  fi
  sleep 0.5
done
