#!/usr/bin/env bash
# A one-host Slurm cluster in a folder, for the Slurm integration test: munged, slurmctld
# and slurmd from Debian's packages, each with its own key, socket, ports, state and logs
# under DIR, so it touches nothing of the host's own Slurm or MUNGE.
#   slurm-local.sh start DIR [CPUS] writes DIR/slurm.conf, starts the daemons, waits until the
#                                   node is idle; prints SLURM_CONF=DIR/slurm.conf
#   slurm-local.sh stop DIR         stops the daemons it started (their pid files in DIR)
# Exit 3 with a line "cannot: why" when the daemons cannot run here (not root, missing
# packages, a daemon that does not come up): the test then reports itself skipped.
set -uo pipefail
cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR [CPUS]" >&2; exit 2; }

stop() {
  for name in slurmd slurmctld munged; do
    local f="$dir/$name.pid"
    [[ -f "$f" ]] || continue
    local pid
    pid="$(cat "$f")"
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$f"
  done
}
if [[ "$cmd" == stop ]]; then stop; exit 0; fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR [CPUS]" >&2; exit 2; }
cpus="${3:-8}"

cannot() { echo "cannot: $*"; stop; exit 3; }
[[ "$(id -u)" == 0 ]] || cannot "not root (slurmd must run as root to start job steps)"
for tool in munged slurmctld slurmd sbatch srun scancel sinfo; do
  command -v "$tool" >/dev/null || cannot "$tool is not installed (Debian: slurmctld slurmd slurm-client munge)"
done

mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
sock="$dir/munge/munge.socket"
munged --force --key-file="$dir/munge/munge.key" --socket="$sock" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" ||
  cannot "munged did not start: $(tail -3 "$dir/munged.log" 2>/dev/null)"
for _ in $(seq 50); do [[ -S "$sock" ]] && break; sleep 0.1; done
[[ -S "$sock" ]] || cannot "munged made no socket"

# Free ports for the two daemons.
read -r ctl_port d_port < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

cat > "$dir/slurm.conf" <<CONF
ClusterName=tokenmilltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# The node's CPUs as configured, not as counted: a 2-core machine runs a 3-task job.
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
MinJobAge=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i || cannot "slurmctld did not start: $(tail -5 "$dir/slurmctld.log" 2>/dev/null)"
slurmd -f "$SLURM_CONF" -N localhost || cannot "slurmd did not start: $(tail -5 "$dir/slurmd.log" 2>/dev/null)"
for _ in $(seq 150); do
  state="$(sinfo -h -N -o %t 2>/dev/null | head -1)"
  [[ "$state" == idle ]] && break
  sleep 0.2
done
[[ "$state" == idle ]] ||
  cannot "the node did not become idle (state '${state:-none}'): $(tail -3 "$dir/slurmd.log" 2>/dev/null | tr '\n' ' ')"
echo "SLURM_CONF=$SLURM_CONF"
