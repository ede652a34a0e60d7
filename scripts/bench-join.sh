#!/usr/bin/env bash
# Join time: launch-to-ready of a 3-node loopback cluster (head: router+supervisor+kv_store,
# p0: prefill, d0: decode; sim engine, inline KV) with node authentication off, with the
# cluster secret only, and with mutual TLS plus the secret. Runs alternate between the
# three, so that machine load hits them alike; each run is `tokenmill launch` until its
# "ready after S s" line, then SIGTERM. Prints one line per variant (median, min, max of the
# ready seconds) and, last, the same as one JSON line.
#
#   scripts/bench-join.sh [--runs N]        (default 5 runs per variant)
#   TOKENMILL_BIN=path   tokenmill binary (default build/apps/tokenmill)
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=5
while (($#)); do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-join: unknown argument '$1' (expected --runs N)" >&2; exit 2 ;;
  esac
  shift
done
bin=${TOKENMILL_BIN:-$repo/build/apps/tokenmill}
[[ -x $bin ]] || { echo "bench-join: no tokenmill binary at $bin" >&2; exit 1; }
work=$(mktemp -d /tmp/tokenmill-bench-join.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$bin" certs init "$work/certs" --nodes head,p0,d0 >/dev/null || exit 1

# Free ports above 20000 (checked with bash's /dev/tcp: nothing answers), one per listener.
port=$((20000 + RANDOM % 20000))
next_port() {
  port=$((port + 1))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
}

manifest() { # NAME SECURITY: writes $work/NAME.yaml
  local f=$work/$1.yaml p=() i
  for ((i = 0; i < 7; i++)); do
    next_port
    p+=("$port")
  done
  {
    echo "cluster: join-$1"
    echo "model: {sim: {decode_step_ms: 2, prefill_us_per_token: 20}}"
    echo "defaults: {engine: sim, block_tokens: 16, kv_transport: inline}"
    echo "frontend: {node: head, rpc_port: ${p[0]}, http_port: ${p[1]}}"
    [[ -n $2 ]] && echo "security: $2"
    echo "nodes:"
    echo "  - {name: head, address: 127.0.0.1, port: ${p[2]}, actors: [router, supervisor, kv_store]}"
    echo "  - {name: p0, address: 127.0.0.1, port: ${p[3]}, http_port: ${p[4]}, actors: [prefill]}"
    echo "  - {name: d0, address: 127.0.0.1, port: ${p[5]}, http_port: ${p[6]}, actors: [decode]}"
  } >"$f"
}

variants=(plain secret tls)
manifest plain ""
manifest secret "{secret_file: certs/secret}"
manifest tls "{tls: {ca: certs/ca.crt, cert: 'certs/{node}.crt', key: 'certs/{node}.key'}, secret_file: certs/secret}"
declare -A times=()

one_run() { # VARIANT -> prints the ready seconds or "fail"
  local out=$work/launch.out
  "$bin" launch "$work/$1.yaml" --log-dir "$work/logs-$1" >"$out" 2>&1 &
  local pid=$! s="" i
  for ((i = 0; i < 300; i++)); do
    s=$(sed -n 's/.* ready after \([0-9.]*\) s.*/\1/p' "$out")
    [[ -n $s ]] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM $pid 2>/dev/null
  wait $pid 2>/dev/null
  echo "${s:-fail}"
}

for ((r = 1; r <= runs; r++)); do
  for v in "${variants[@]}"; do
    t=$(one_run "$v")
    echo "bench-join: run $r $v ready after ${t} s" >&2
    [[ $t == fail ]] || times[$v]+="$t "
  done
done

json="{\"runs\": $runs"
for v in "${variants[@]}"; do
  read -r med lo hi n < <(printf '%s\n' ${times[$v]:-} | sort -g |
    awk '{a[NR]=$1} END {if (NR==0) {print "null null null 0"; exit}
         m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR], NR}')
  printf 'join %-6s launch-to-ready median %s s (min %s, max %s, %s runs)\n' "$v" "$med" "$lo" "$hi" "$n"
  json+=", \"$v\": {\"median_s\": $med, \"min_s\": $lo, \"max_s\": $hi, \"ok_runs\": $n}"
done
echo "$json}"
