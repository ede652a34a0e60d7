#!/usr/bin/env bash
# Multi-node benchmark: launches the cluster of a host manifest, sweeps open-loop request
# rates with `tokenmill bench`, runs the same sweep aggregated and disaggregated, tears the
# cluster down after each, and writes a results folder with JSON, a table and plots.
#
#   scripts/bench-multinode.sh MANIFEST [options]
#
#   --rates "1 2 4 8"      offered request rates, requests/s (default "1 2 4 8")
#   --requests N           requests per rate (default 60)
#   --input-len L          prompt tokens (default 128)
#   --output-len L         output tokens per request (default 64)
#   --workload W           random | shared-prefix (default random); sharegpt needs
#                          --bench-args "--dataset FILE"
#   --slo-ttft-ms MS       goodput: time-to-first-token objective (default: bench's)
#   --slo-tpot-ms MS       goodput: time-per-output-token objective (default: bench's)
#   --configs "disagg agg" configurations, in this order (default both):
#                            disagg  the manifest as written: prefill workers prefill remotely
#                            agg     the same nodes and number of workers, every prefill worker
#                                    a decode worker, router.local_prefill_threshold=4294967295:
#                                    every prompt is prefilled by the decode worker serving it
#   --out DIR              results folder (default bench-results/multinode-<cluster>-<YYYYmmdd-HHMMSS>)
#   --free-ports           give loopback nodes and the frontend free ports (else the manifest's
#                          ports must be free, and the script says which are not)
#   --netns                run each node in its own network namespace (one per address, joined by
#                          a bridge), for manifests with namespace addresses such as
#                          examples/netns-3host.yaml; needs root. KV over UCX is forced onto tcp.
#   --bench-args "ARGS"    more `tokenmill bench` options, word-split (e.g. "--warmup 4 --prefix-len 256")
#   --ready-timeout S      seconds for the cluster to become ready (default 60)
#   --no-plots             skip the PNG plots
#   TOKENMILL_BIN=path     tokenmill binary (default build/apps/tokenmill; built when missing)
#
# Results: DIR/manifest-original.yaml, DIR/manifest-<config>.yaml (what ran), DIR/logs-<config>/
# (node logs), DIR/<config>-rate<R>.json (one bench run each) and .log (its output),
# DIR/runs.tsv, DIR/meta.json (machine, CPU steal, git commit, command), DIR/summary.json,
# DIR/{ttft,itl,throughput,goodput,ttft_stages}.png and DIR/README.md.
set -u -o pipefail
export LC_ALL=C

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
cmdline="$0 $*"

say() { echo "bench-multinode: $*"; }
die() {
  echo "bench-multinode: error: $*" >&2
  exit 1
}
usage() { sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

manifest="" rates="1 2 4 8" requests=60 input_len=128 output_len=64 workload=random
slo_ttft="" slo_tpot="" bench_args="" configs="disagg agg" out="" netns=0 plots=1 free=0 ready_timeout=60
while (($#)); do
  case "$1" in
    --rates) rates=${2:?--rates needs a list, e.g. \"1 2 4\"}; shift ;;
    --requests) requests=${2:?--requests needs a number}; shift ;;
    --input-len) input_len=${2:?--input-len needs a number}; shift ;;
    --output-len) output_len=${2:?--output-len needs a number}; shift ;;
    --workload) workload=${2:?--workload needs random or shared-prefix}; shift ;;
    --slo-ttft-ms) slo_ttft=${2:?--slo-ttft-ms needs a number}; shift ;;
    --slo-tpot-ms) slo_tpot=${2:?--slo-tpot-ms needs a number}; shift ;;
    --configs) configs=${2:?--configs needs a list, e.g. \"disagg agg\"}; shift ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    --bench-args) bench_args=${2?--bench-args needs a string}; shift ;;
    --ready-timeout) ready_timeout=${2:?--ready-timeout needs seconds}; shift ;;
    --free-ports) free=1 ;;
    --netns) netns=1 ;;
    --no-plots) plots=0 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "bench-multinode: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
    *)
      [[ -z $manifest ]] || { echo "bench-multinode: one manifest only (got '$manifest' and '$1')" >&2; exit 2; }
      manifest=$1
      ;;
  esac
  shift
done
[[ -n $manifest ]] || { usage >&2; exit 2; }
[[ -r $manifest ]] || die "cannot read the manifest $manifest"
manifest=$(realpath "$manifest")

# Arguments.
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v x="$1" 'BEGIN{exit !(x > 0)}'; }
is_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
read -r -a rate_list <<<"$rates"
read -r -a config_list <<<"$configs"
((${#rate_list[@]})) || die "--rates is empty"
((${#config_list[@]})) || die "--configs is empty"
for r in "${rate_list[@]}"; do is_num "$r" || die "--rates: '$r' is not a positive number (requests/s)"; done
for c in "${config_list[@]}"; do
  [[ $c == disagg || $c == agg ]] || die "--configs: unknown configuration '$c' (disagg or agg)"
done
is_int "$requests" || die "--requests: '$requests' is not a positive integer"
is_int "$input_len" || die "--input-len: '$input_len' is not a positive integer"
is_int "$output_len" || die "--output-len: '$output_len' is not a positive integer"
is_num "$ready_timeout" || die "--ready-timeout: '$ready_timeout' is not a positive number"
[[ $workload == random || $workload == shared-prefix || $workload == sharegpt ]] ||
  die "--workload: '$workload' (random, shared-prefix, or sharegpt with --bench-args \"--dataset FILE\")"
[[ -z $slo_ttft ]] || is_num "$slo_ttft" || die "--slo-ttft-ms: '$slo_ttft' is not a positive number"
[[ -z $slo_tpot ]] || is_num "$slo_tpot" || die "--slo-tpot-ms: '$slo_tpot' is not a positive number"
((netns && free)) && die "--free-ports and --netns do not mix: namespace addresses have their own ports"

# Tools.
"$py" -c 'import yaml' 2>/dev/null ||
  die "python3-yaml is missing ($py -c 'import yaml' fails); install it with scripts/setup.sh --bench"
bin="${TOKENMILL_BIN:-$repo/build/apps/tokenmill}"
[[ $bin == */* && $bin != /* ]] && bin=$PWD/$bin
if [[ ! -x $bin ]]; then
  [[ -n ${TOKENMILL_BIN:-} ]] && die "TOKENMILL_BIN=$bin is not an executable"
  say "no binary at $bin; building it (scripts/build.sh)"
  TOKENMILL_SKIP_SETUP=1 "$repo/scripts/build.sh" || die "the build failed"
fi
bench_help=$("$bin" bench --help 2>&1)
for flag in --rate --output --no-progress --workload; do
  grep -qE -- "$flag([^a-z-]|\$)" <<<"$bench_help" ||
    die "'$bin bench' has no $flag option: this script needs the open-loop bench (--rate, --workload, --json --output FILE); rebuild tokenmill"
done
for flag in ${slo_ttft:+--slo-ttft-ms} ${slo_tpot:+--slo-tpot-ms}; do
  grep -qE -- "$flag([^a-z-]|\$)" <<<"$bench_help" || die "'$bin bench' has no $flag option"
done
bench_seed=0
grep -qE -- '--seed([^a-z-]|$)' <<<"$bench_help" && bench_seed=1
mv_py=$repo/scripts/manifest_variant.py

info=$("$py" "$mv_py" info "$manifest") || die "cannot read $manifest"
jq_info() { "$py" -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$info" "$1"; }
cluster=$(jq_info 'd["cluster"]')
[[ -n $out ]] || out="$repo/bench-results/multinode-${cluster:-cluster}-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out" || die "cannot create $out"
out=$(realpath "$out")
[[ -e $out/runs.tsv ]] && die "$out already holds results (runs.tsv); give another --out"
cp "$manifest" "$out/manifest-original.yaml"
printf 'config\trate\trc\tfile\twall_s\tcpu_busy_pct\tcpu_steal_pct\n' >"$out/runs.tsv"

# CPU counters from /proc/stat: "total busy steal" in jiffies (all CPUs); busy is what this
# machine's tasks ran (user, nice, system, irq, softirq), steal what the hypervisor took.
cpu_stat() { awk '/^cpu /{t=$2+$3+$4+$5+$6+$7+$8+$9; print t, t-$5-$6-$9, $9; exit}' /proc/stat; }
# cpu_pct BEFORE AFTER -> "busy% steal%"
cpu_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," "); split(b,y," "); t=y[1]-x[1]; if (t<=0) t=1;
    printf "%.1f %.1f", 100*(y[2]-x[2])/t, 100*(y[3]-x[3])/t}'
}
stat_start=$(cpu_stat)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Network namespaces (--netns): one per distinct node address, veth pairs to a bridge in
# tmb-br. Nothing is created in the root namespace. Same scheme as scripts/netns-3host.sh,
# with its own names (tmb-*) so that both can run at once.
# ---------------------------------------------------------------------------------------------
declare -A addr_ns=()
namespaces=()
exec_front=()
if ((netns)); then
  (($(id -u) == 0)) || die "--netns must run as root: network namespaces and veth pairs need CAP_NET_ADMIN/CAP_SYS_ADMIN (try: sudo $0 ...)"
  command -v ip >/dev/null || die "--netns needs the 'ip' command (iproute2)"
  # One line per address: "ADDRESS PREFIX", or an error.
  plan=$("$py" - "$info" <<'PY'
import ipaddress, json, sys
d = json.loads(sys.argv[1])
bad = [n for n in d["nodes"] if n["ssh"]]
if bad:
    sys.exit(f"node {bad[0]['name']} has an ssh target; --netns runs every node on this machine")
addrs = []
for n in d["nodes"]:
    try:
        a = ipaddress.IPv4Address(n["address"])
    except ValueError:
        sys.exit(f"node {n['name']}: address '{n['address']}' is not an IPv4 address; --netns "
                 "gives each address its own namespace")
    if a.is_loopback or a.is_unspecified:
        sys.exit(f"node {n['name']}: address {a} is loopback; in namespaces every node has its own "
                 "loopback. Use a manifest with one private address per host "
                 "(examples/netns-3host.yaml), or run without --netns")
    if a not in addrs:
        addrs.append(a)
prefix = 24
while prefix > 8 and len({ipaddress.IPv4Network(f"{a}/{prefix}", strict=False) for a in addrs}) > 1:
    prefix -= 1
if len({ipaddress.IPv4Network(f"{a}/{prefix}", strict=False) for a in addrs}) > 1:
    sys.exit("the node addresses share no /8 or longer prefix; --netns puts them on one bridge")
for a in addrs:
    print(a, prefix)
PY
  ) || die "--netns: cannot map $manifest onto namespaces: see above"
  lock=/run/lock/tokenmill-bench-multinode-netns.lock
  [[ -d /run/lock && -w /run/lock ]] || lock=/tmp/tokenmill-bench-multinode-netns.lock
  exec 8>"$lock" || die "cannot open the lock file $lock"
  flock -n 8 || die "another bench-multinode.sh --netns is running (its namespaces are tmb-*)"
fi

# ---------------------------------------------------------------------------------------------
# Teardown: the cluster (launch or nodes), the namespaces, then a partial summary.
# ---------------------------------------------------------------------------------------------
launch_pid="" bench_pid="" run_variant=""
declare -A node_pid=()
interrupted=0 finished=0

# stop_pid PID SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.1
  done
  echo "bench-multinode: pid $pid did not stop within $2 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

# Processes of this run still alive: the nodes we know by pid, and any tokenmill process whose
# command line names this run's manifest file (a unique path in the results folder).
leftovers() {
  local p left=()
  for p in "${node_pid[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
  if [[ -n $run_variant ]]; then
    for p in $(pgrep -f -- "--manifest $run_variant" 2>/dev/null); do
      [[ " ${left[*]} " == *" $p "* ]] || left+=("$p")
    done
  fi
  echo "${left[*]}"
}

stop_cluster() {
  [[ -n $bench_pid ]] && { kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid" 2>/dev/null; bench_pid=""; }
  if [[ -n $launch_pid ]]; then
    stop_pid "$launch_pid" 20 # launch gives its nodes 10 s, then kills them
    launch_pid=""
  fi
  local n
  for n in "${!node_pid[@]}"; do stop_pid "${node_pid[$n]}" 10; done
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    echo "bench-multinode: tokenmill processes of this run still alive after the stop: $left; killing them" >&2
    # shellcheck disable=SC2086  # a list of pids
    kill -KILL $left 2>/dev/null
    sleep 0.2
    left=$(leftovers)
    [[ -z $left ]] || echo "bench-multinode: still alive: $left" >&2
  fi
  node_pid=()
  run_variant=""
  [[ -z $left ]]
}

netns_delete() {
  local ns pid
  for ns in "${namespaces[@]}" tmb-br; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || echo "bench-multinode: could not delete namespace $ns" >&2
  done
}

write_meta() {
  local complete=$1 stat_end
  stat_end=$(cpu_stat)
  read -r busy steal <<<"$(cpu_pct "$stat_start" "$stat_end")"
  M_MANIFEST=$manifest M_CLUSTER=$cluster M_CMD=$cmdline M_CONFIGS=$configs M_RATES=$rates \
    M_REQ=$requests M_IN=$input_len M_OUTL=$output_len M_WL=$workload M_TTFT=$slo_ttft \
    M_TPOT=$slo_tpot M_NETNS=$netns M_BIN=$bin M_REPO=$repo M_COMPLETE=$complete \
    M_STAT0=$stat_start M_STAT1=$stat_end M_BUSY=$busy M_STEAL=$steal M_LOAD0=$load_start \
    M_T0=$t_start M_OUT=$out M_FREE=$free \
    "$py" - <<'PY'
import json, os, platform, subprocess, time
e = os.environ
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, cwd=e["M_REPO"]).stdout.strip()
    except OSError:
        return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
def stat(s):
    t, b, st = (int(x) for x in s.split())
    return {"total_jiffies": t, "busy_jiffies": b, "steal_jiffies": st}
num = lambda s: float(s) if s else None
meta = {
    "manifest": e["M_MANIFEST"], "cluster": e["M_CLUSTER"], "command": e["M_CMD"],
    "complete": e["M_COMPLETE"] == "1",
    "configs": e["M_CONFIGS"].split(), "rates": e["M_RATES"].split(),
    "requests": int(e["M_REQ"]), "input_len": int(e["M_IN"]), "output_len": int(e["M_OUTL"]),
    "workload": e["M_WL"], "slo": {"ttft_ms": num(e["M_TTFT"]), "tpot_ms": num(e["M_TPOT"])},
    "netns": e["M_NETNS"] == "1", "free_ports": e["M_FREE"] == "1", "tokenmill_bin": e["M_BIN"],
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(int(e["M_T0"]))),
    "duration_s": int(time.time()) - int(e["M_T0"]),
    "machine": {
        "hostname": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
        "cpu_model": cpu, "mem_total_kb": next((int(l.split()[1]) for l in open("/proc/meminfo")
                                                if l.startswith("MemTotal")), None),
        "loadavg_before": e["M_LOAD0"], "loadavg_after": " ".join(open("/proc/loadavg").read().split()[:3]),
        "proc_stat_cpu_before": stat(e["M_STAT0"]), "proc_stat_cpu_after": stat(e["M_STAT1"]),
        "cpu_busy_pct": float(e["M_BUSY"]), "cpu_steal_pct": float(e["M_STEAL"]),
    },
    "git": {"commit": sh("git", "rev-parse", "HEAD"), "branch": sh("git", "rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no"))},
}
json.dump(meta, open(os.path.join(e["M_OUT"], "meta.json"), "w"), indent=2)
PY
}

# shellcheck disable=SC2317  # called by the EXIT trap
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $launch_pid || ${#node_pid[@]} -gt 0 || -n $bench_pid ]]; then
    say "stopping the cluster"
    stop_cluster
  fi
  ((netns)) && netns_delete
  if ((!finished)) && [[ -d $out ]] && (($(wc -l <"$out/runs.tsv") > 1)); then
    say "writing what was measured before the $( ((interrupted)) && echo interruption || echo error)"
    write_meta 0
    "$py" "$repo/scripts/bench_plot.py" --summary "$out" >/dev/null 2>&1
    say "partial results: $out"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'echo; say "interrupted"; interrupted=1; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Namespaces, created once for every configuration.
# ---------------------------------------------------------------------------------------------
run_ip() {
  local err
  err=$(ip "$@" 2>&1) || die "'ip $*' failed: $err"
}
if ((netns)); then
  i=0
  while read -r addr prefix; do
    addr_ns[$addr]=tmb-$i
    namespaces+=("tmb-$i")
    i=$((i + 1))
  done <<<"$plan"
  for ns in "${namespaces[@]}" tmb-br; do
    if ip netns list 2>/dev/null | grep -qw "^$ns"; then
      say "removing namespace $ns left over from an earlier run"
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
      ip netns del "$ns" || die "cannot delete the leftover namespace $ns"
    fi
  done
  say "creating namespaces ${namespaces[*]} tmb-br (bridge br0 in tmb-br, one veth pair per address)"
  for ns in "${namespaces[@]}" tmb-br; do
    err=$(ip netns add "$ns" 2>&1) ||
      die "'ip netns add $ns' failed: $err (network namespaces need root, a kernel with CONFIG_NET_NS, and a writable /run/netns; inside a container they need CAP_SYS_ADMIN)"
  done
  run_ip -n tmb-br link set lo up
  err=$(ip -n tmb-br link add br0 type bridge 2>&1) ||
    die "'ip link add br0 type bridge' failed: $err (the kernel needs the bridge module)"
  run_ip -n tmb-br link set br0 up
  i=0
  while read -r addr prefix; do
    ns=${addr_ns[$addr]}
    err=$(ip -n tmb-br link add "v$i" type veth peer name eth0 netns "$ns" 2>&1) ||
      die "'ip link add v$i type veth' failed: $err (the kernel needs the veth module)"
    run_ip -n tmb-br link set "v$i" master br0 up
    run_ip -n "$ns" link set lo up
    run_ip -n "$ns" addr add "$addr/$prefix" dev eth0
    run_ip -n "$ns" link set eth0 up
    say "  $ns: eth0 $addr/$prefix <-> tmb-br v$i (br0)"
    i=$((i + 1))
  done <<<"$plan"
  front_addr=$(jq_info 'next(n["address"] for n in d["nodes"] if n["name"] == d["frontend"]["node"])')
  exec_front=(ip netns exec "${addr_ns[$front_addr]}")
fi

# ---------------------------------------------------------------------------------------------
# One configuration: manifest, launch, sweep, stop.
# ---------------------------------------------------------------------------------------------

# start_launch VARIANT LOGDIR: `tokenmill launch`, waits for its ready line; sets endpoint.
start_launch() {
  local variant=$1 logs=$2 i
  "$bin" launch "$variant" --log-dir "$logs" --ready-timeout "$ready_timeout" \
    >"$logs/launch.out" 2>&1 </dev/null 8>&- &
  launch_pid=$!
  local deadline=$(($(date +%s) + ${ready_timeout%.*} + 15))
  while :; do
    while read -r n p; do node_pid[$n]=$p; done < <(sed -n 's/^launch: node *\([^ ]*\) *starting (pid \([0-9]*\).*/\1 \2/p' "$logs/launch.out")
    grep -q '^tokenmill cluster .* ready' "$logs/launch.out" && break
    if ! kill -0 "$launch_pid" 2>/dev/null; then
      wait "$launch_pid"
      echo "bench-multinode: tokenmill launch exited ($?) before the cluster was ready; its output:" >&2
      tail -n 40 "$logs/launch.out" | sed 's/^/    | /' >&2
      launch_pid=""
      return 1
    fi
    if (($(date +%s) > deadline)); then
      echo "bench-multinode: the cluster was not ready within ${ready_timeout} s; launch's output:" >&2
      tail -n 40 "$logs/launch.out" | sed 's/^/    | /' >&2
      return 1
    fi
    sleep 0.2
  done
  endpoint=$(sed -n 's/^tokenmill cluster .* ready.*rpc=\([^ ]*\).*/\1/p' "$logs/launch.out" | head -1)
  say "  $(grep -m1 '^tokenmill cluster .* ready' "$logs/launch.out")"
  [[ -n $endpoint ]]
}

# start_netns VARIANT LOGDIR: one `tokenmill node` per node in its address's namespace, the
# supervisor's node first (as launch does); waits for every node and then the cluster.
start_netns() {
  local variant=$1 logs=$2 n ns addr i
  local order
  order=$(jq_info '" ".join(n["name"]+"="+n["address"] for n in sorted(d["nodes"], key=lambda n: "supervisor" not in n["roles"]))')
  for i in $order; do
    n=${i%%=*} addr=${i#*=} ns=${addr_ns[${i#*=}]}
    ip netns exec "$ns" env UCX_TLS=tcp UCX_NET_DEVICES=eth0 "$bin" node --manifest "$variant" --name "$n" \
      >"$logs/$n.log" 2>&1 </dev/null 8>&- &
    node_pid[$n]=$!
    say "  node $n in $ns ($addr, pid ${node_pid[$n]}), log $logs/$n.log"
  done
  local deadline=$(($(date +%s) + ${ready_timeout%.*}))
  for i in $order; do
    n=${i%%=*}
    until grep -q "tokenmill node ready" "$logs/$n.log" 2>/dev/null; do
      if ! kill -0 "${node_pid[$n]}" 2>/dev/null; then
        echo "bench-multinode: node $n exited before it was ready; its log:" >&2
        tail -n 40 "$logs/$n.log" | sed 's/^/    | /' >&2
        return 1
      fi
      if (($(date +%s) > deadline)); then
        echo "bench-multinode: node $n not ready within ${ready_timeout} s; its log:" >&2
        tail -n 40 "$logs/$n.log" | sed 's/^/    | /' >&2
        return 1
      fi
      sleep 0.1
    done
  done
  endpoint="$(jq_info 'd["frontend"]["host"]'):$(jq_info 'd["frontend"]["rpc_port"]')"
  local st=""
  while (($(date +%s) <= deadline + 10)); do
    st=$("${exec_front[@]}" "$bin" status --connect "$endpoint" --json --timeout 2 2>&1 8>&-)
    [[ $st == *'"ready":true'* ]] && { say "  cluster ready: rpc=$endpoint (inside ${exec_front[3]})"; return 0; }
    sleep 0.2
  done
  echo "bench-multinode: every node joined but the cluster did not report ready: $st" >&2
  return 1
}

# After a failed launch: names the nodes launched here whose address this machine does not have.
launch_hint() {
  local name addr
  while read -r name addr; do
    [[ -n $name ]] || continue
    ip -o addr show 2>/dev/null | grep -qF " $addr/" && continue
    echo "bench-multinode: hint: node $name's address $addr is not an address of this machine; for namespace addresses (like examples/netns-3host.yaml) use --netns" >&2
  done < <(jq_info '"\n".join(n["name"] + " " + n["address"] for n in d["nodes"] if not n["local"] and not n["ssh"])')
}

# brief FILE: one line from a bench JSON.
brief() {
  "$py" - "$1" <<'PY' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
g = j.get("goodput") or {}
print(f"{j.get('requests_per_s', 0):.2f} req/s, TTFT p50 {j['ttft_ms']['p50']:.1f} ms, "
      f"ITL p50 {j['itl_ms']['p50']:.2f} ms, goodput {g.get('requests_per_s', 0):.2f} req/s, "
      f"{j.get('failed', 0)} failed", end="")
PY
}

cluster_alive() {
  if ((netns)); then
    local p
    for p in "${node_pid[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
    return 0
  fi
  [[ -n $launch_pid ]] && kill -0 "$launch_pid" 2>/dev/null
}

failures=0
for config in "${config_list[@]}"; do
  say "=== $config ==="
  variant=$out/manifest-$config.yaml
  write_args=(--config "$config")
  ((free)) && write_args+=(--free-ports)
  "$py" "$mv_py" write "$manifest" "$variant" "${write_args[@]}" ||
    die "could not write the $config manifest"
  check_args=()
  ((netns)) && check_args=(--no-port-check)
  if ! "$bin" manifest check "${check_args[@]}" "$variant" >"$out/manifest-$config.check.txt" 2>&1; then
    sed 's/^/    | /' "$out/manifest-$config.check.txt" >&2
    if grep -qi 'port' "$out/manifest-$config.check.txt"; then
      die "the $config manifest does not check: a port it needs is busy (another cluster running?). Stop it, or rerun with --free-ports"
    fi
    die "the $config manifest ($variant) does not check; see above"
  fi
  say "manifest $variant checked ($(grep -o 'hash [0-9a-f]*' "$out/manifest-$config.check.txt" | tail -1))"
  logs=$out/logs-$config
  mkdir -p "$logs"
  run_variant=$variant
  endpoint=""
  if ((netns)); then
    start_netns "$variant" "$logs" || die "the $config cluster did not start"
  else
    say "tokenmill launch $variant --log-dir $logs"
    start_launch "$variant" "$logs" || { launch_hint; die "the $config cluster did not start"; }
  fi
  idx=0
  for rate in "${rate_list[@]}"; do
    idx=$((idx + 1))
    file=$config-rate$rate.json
    rm -f "$out/$file"
    if ! cluster_alive; then
      say "  rate $rate/s: the cluster is gone; skipping"
      printf '%s\t%s\t%s\t%s\t0\t0\t0\n' "$config" "$rate" 99 "$file" >>"$out/runs.tsv"
      failures=$((failures + 1))
      continue
    fi
    cmd=("$bin" bench --connect "$endpoint" --rate "$rate" --requests "$requests"
      --input-len "$input_len" --output-len "$output_len" --workload "$workload"
      --json --output "$out/$file" --no-progress)
    [[ -n $slo_ttft ]] && cmd+=(--slo-ttft-ms "$slo_ttft")
    [[ -n $slo_tpot ]] && cmd+=(--slo-tpot-ms "$slo_tpot")
    # shellcheck disable=SC2206  # word splitting of the extra arguments is intended
    [[ -n $bench_args ]] && cmd+=($bench_args)
    # A different prompt seed per rate (the same in every config), so that one rate does not
    # find the prompts of the previous one in the prefix cache.
    ((bench_seed)) && [[ " $bench_args " != *" --seed "* ]] && cmd+=(--seed $((1000 + idx)))
    # Bounded (a hung cluster must not hang the sweep): three times the arrival span plus 5 min.
    limit=$(awk -v n="$requests" -v r="$rate" 'BEGIN{printf "%d", 3*n/r + 300}')
    echo "${exec_front[*]}${exec_front:+ }${cmd[*]}" >"$out/${file%.json}.log"
    say "  rate $rate/s: $requests requests ($(basename "$bin") bench --rate $rate, at most ${limit} s)"
    s0=$(cpu_stat)
    t0=$(date +%s.%N)
    timeout "$limit" "${exec_front[@]}" "${cmd[@]}" >>"$out/${file%.json}.log" 2>&1 </dev/null 8>&- &
    bench_pid=$!
    wait "$bench_pid"
    brc=$?
    bench_pid=""
    t1=$(date +%s.%N)
    read -r busy steal <<<"$(cpu_pct "$s0" "$(cpu_stat)")"
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    if [[ ! -s $out/$file ]]; then
      # Fallback: the JSON object on stdout (the log's last line).
      tail -n 1 "$out/${file%.json}.log" | "$py" -c 'import json,sys; json.dump(json.loads(sys.stdin.read()), sys.stdout)' \
        >"$out/$file" 2>/dev/null || rm -f "$out/$file"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$rate" "$brc" "$file" "$wall" "$busy" "$steal" >>"$out/runs.tsv"
    if ((brc != 0)) || [[ ! -s $out/$file ]]; then
      failures=$((failures + 1))
      echo "bench-multinode:   rate $rate/s FAILED (exit $brc$( ((brc == 124)) && echo ', timed out')); last lines of ${file%.json}.log:" >&2
      tail -n 8 "$out/${file%.json}.log" | sed 's/^/    | /' >&2
    else
      say "  rate $rate/s: $(brief "$out/$file") in ${wall} s (CPU busy ${busy}%, steal ${steal}%)"
    fi
  done
  say "stopping the $config cluster"
  if ! stop_cluster; then
    die "tokenmill processes of the $config run survived the stop"
  fi
  say "no tokenmill process of the $config run remains"
done

# ---------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------
((netns)) && { netns_delete; namespaces=(); say "namespaces deleted"; }
write_meta 1
finished=1
echo
"$py" "$repo/scripts/bench_plot.py" --summary "$out" || die "could not write summary.json"
read -r tot_busy tot_steal <<<"$(cpu_pct "$stat_start" "$(cpu_stat)")"
echo "machine: $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)); during the run: CPU busy ${tot_busy}%, steal ${tot_steal}%; load average before ${load_start}, after $(cut -d' ' -f1-3 /proc/loadavg)"
if ((plots)); then
  "$py" "$repo/scripts/bench_plot.py" "$out" || say "the plots failed (the JSON results are complete)"
fi

slo_txt="${slo_ttft:+TTFT <= $slo_ttft ms}${slo_ttft:+${slo_tpot:+, }}${slo_tpot:+TPOT <= $slo_tpot ms}"
[[ -n $slo_txt ]] || slo_txt="the bench's defaults"
cat >"$out/README.md" <<EOF
# Multi-node benchmark: $cluster

\`\`\`
$cmdline
\`\`\`

Manifest \`$(basename "$manifest")\` (copied as \`manifest-original.yaml\`), $( ((netns)) && echo 'each node in its own network namespace, ')$requests requests per rate,
$workload workload, $input_len prompt tokens, $output_len output tokens, open-loop arrivals at
${rates// /, } requests/s. Goodput SLO: ${slo_txt}. Machine, CPU steal and git commit: \`meta.json\`.

| configuration | manifest | what it is |
|---|---|---|
$(for c in "${config_list[@]}"; do
  case $c in
    disagg) echo "| disagg | \`manifest-disagg.yaml\` | the manifest as written: prompts are prefilled by the prefill workers, KV blocks move to the decode worker |" ;;
    agg) echo "| agg | \`manifest-agg.yaml\` | the same nodes and number of workers, every prefill worker a decode worker, \`router.local_prefill_threshold: 4294967295\`: every prompt is prefilled by the decode worker that serves it, between its decode steps |" ;;
  esac
done)

Files: \`<config>-rate<R>.json\` is one \`tokenmill bench --json\` run (its command line heads \`<config>-rate<R>.log\`),
\`summary.json\` all of them by configuration and rate, \`logs-<config>/\` the node logs, \`runs.tsv\` exit code, wall time and
CPU busy/steal per run (steal is time the hypervisor gave to others: a run with high steal is noise).

## Reading the plots

- \`ttft.png\`: time to first token, p50 (solid) and p99 (dashed), against the offered rate. Healthy: flat, near the
  prefill time of one prompt. Saturated: it climbs steeply, because requests queue for prefill.
- \`itl.png\`: inter-token latency p50/p99. Healthy: near the decode step. With disagg it should stay flat as the
  rate grows (decode workers never prefill); with agg it grows, since prompts are prefilled between decode steps
  and every running sequence waits for them (p99 first).
- \`throughput.png\`: output tokens/s, and achieved against offered requests/s. Healthy: on the dotted diagonal.
  Below it the cluster no longer keeps up; the point where the curve bends is its capacity.
- \`goodput.png\`: requests/s, and the fraction of requests, meeting the SLOs. Goodput that falls away from the
  diagonal while throughput still follows it means requests are served, but too slowly.
- \`ttft_stages.png\`: the mean TTFT split into its stages (client, frontend, routing, prefill queue and compute,
  KV transfer, ...), one bar per configuration and rate; the black mark is the measured mean. A growing
  \`prefill_queue\` is queueing for prefill; \`kv_transfer\` is what disaggregation costs; agg has none.
EOF
say "results: $out"
if ((failures)); then
  say "$failures bench run(s) failed; see the table and the .log files"
  exit 1
fi
exit 0
