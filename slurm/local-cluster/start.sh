#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (needs root): a private munged, a private MariaDB
# + slurmdbd (so sacct works), slurmctld and slurmd with two fake GPUs as GRES. On a fresh Debian/Ubuntu machine the
# packages are installed first (install.sh). Not root: one error line, nothing touched (unless it is already up).
# Idempotent: a running cluster is reported and left alone; missing daemons are started; stale PID files (after a
# reboot) are ignored. All state lives in $SLURM_LOCAL_DIR (default <repo>/.slurm-local); the only file outside it
# is the symlink /etc/slurm/slurm.conf -> $SLURM_LOCAL_DIR/etc/slurm.conf, so plain sbatch/squeue/sacct (and
# submitit) work from any shell. Stop with stop.sh.
# Environment: SLURM_LOCAL_DIR, SLURM_LOCAL_CLUSTER (default local), SLURM_LOCAL_PARTITION (default debug).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=$(realpath -m "${SLURM_LOCAL_DIR:-$repo/.slurm-local}") # not created yet: a non-root caller changes nothing
cluster=${SLURM_LOCAL_CLUSTER:-local}
partition=${SLURM_LOCAL_PARTITION:-debug}
host=$(hostname -s)
etc=$state/etc
export SLURM_CONF=$etc/slurm.conf
export MYSQL_UNIX_PORT=$state/mysqld/mysqld.sock # slurmdbd's MariaDB client finds the private server here
t0=$(date +%s%N)

say() { echo "local-cluster: $*"; }
elapsed() { local ds=$((($(date +%s%N) - t0) / 100000000)); echo "$((ds / 10)).$((ds % 10))"; }
# alive PIDFILE NAME: the PID in the file belongs to a running NAME (a stale file after a reboot does not count)
alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1" 2>/dev/null)/comm" 2>/dev/null)" = "$2" ]; }
logs_tail() { tail -n 15 "$state"/log/*.log >&2 2>/dev/null || true; }
wait_for() { # wait_for SECONDS WHAT 'SHELL COMMAND' (functions and variables below are exported for it)
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    timeout 10 bash -c "$3" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "local-cluster: error: timed out after $1 s waiting for $2; last log lines:" >&2
  logs_tail
  exit 1
}
node_state() { sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1; }
node_up() { node_state | grep -qE '^(idle|mixed|allocated|completing)$'; }
export host
export -f node_state node_up
daemons_alive() {
  alive "$state/munge/munged.pid" munged && alive "$state/mysqld/mysqld.pid" mariadbd &&
    alive "$state/slurmdbd.pid" slurmdbd && alive "$state/slurmctld.pid" slurmctld && alive "$state/slurmd.pid" slurmd
}
write_file() { # write_file PATH MODE < content: temp + rename, never half-written
  cat >"$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"
}

if daemons_alive && node_up; then
  say "already running: partition $partition, node $host $(node_state) (SLURM_CONF=$SLURM_CONF)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then # other users may not read every PID file: sinfo answering is enough for them
  if [ -r "$SLURM_CONF" ] && node_up; then
    say "already running: partition $partition, node $host $(node_state) (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  echo "local-cluster: error: starting the cluster needs root (sudo make cluster-up, or sudo bash $0)" >&2
  exit 1
fi
bash "$here/install.sh" # the Debian packages, when missing (a fresh machine); says so in one line otherwise
mkdir -p "$state"/{log,ctld,spool,dev,etc,munge,mysqld}
chmod 755 "$state"

start_munge() {
  [ -s "$state/munge/munge.key" ] || mungekey --create --keyfile="$state/munge/munge.key"
  chmod 600 "$state/munge/munge.key"
  if ! alive "$state/munge/munged.pid" munged; then
    rm -f "$state/munge/munged.pid"
    munged --force --socket="$state/munge/munge.socket" --key-file="$state/munge/munge.key" \
      --pid-file="$state/munge/munged.pid" --log-file="$state/log/munged.log" \
      --seed-file="$state/munge/munged.seed" 2>>"$state/log/munged.log"
  fi
  wait_for 10 munged "munge -S '$state/munge/munge.socket' -n | unmunge -S '$state/munge/munge.socket'"
}

# A private datadir; root@localhost authenticates by unix socket, so no password exists. mariadbd runs as root like
# the SLURM daemons: the user mysql may not be able to reach a state directory inside someone's home.
start_mariadb() {
  local data=$state/mysql
  if [ ! -d "$data/mysql" ]; then
    rm -rf "$data" && mkdir -p "$data"
    mariadb-install-db --no-defaults --datadir="$data" --user=root --auth-root-authentication-method=socket \
      --skip-test-db >"$state/log/mariadb-install.log" 2>&1 || {
      logs_tail
      exit 1
    }
  fi
  if ! alive "$state/mysqld/mysqld.pid" mariadbd; then
    rm -f "$state/mysqld/mysqld.sock" "$state/mysqld/mysqld.pid"
    setsid mariadbd --no-defaults --user=root --datadir="$data" --socket="$MYSQL_UNIX_PORT" --skip-networking \
      --pid-file="$state/mysqld/mysqld.pid" --log-error="$state/log/mariadb.log" \
      --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  fi
  wait_for 60 MariaDB "mariadb --socket='$MYSQL_UNIX_PORT' -e 'select 1'"
}

make_fake_gpus() { # the node is INVAL unless gres.conf names one device file per GPU
  for i in 0 1; do [ -c "$state/dev/gpu$i" ] || mknod "$state/dev/gpu$i" c 1 3; done
}

write_configs() {
  local cpus mem_mb auth="AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket"
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) * 85 / 100 / 1024)) # RealMemory below the physical
  write_file "$etc/slurmdbd.conf" 600 <<CONF
# generated by $repo/slurm/local-cluster/start.sh
$auth
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$state/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
CONF
  write_file "$etc/slurm.conf" 644 <<CONF
# generated by $repo/slurm/local-cluster/start.sh
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
$auth
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoragePass=$state/munge/munge.socket
JobRequeue=1
ReturnToService=2
MinJobAge=300
KillWait=10
PreemptType=preempt/none
PreemptMode=OFF
MpiDefault=none
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  write_file "$etc/gres.conf" 644 <<CONF
NodeName=$host Name=gpu File=$state/dev/gpu0
NodeName=$host Name=gpu File=$state/dev/gpu1
CONF
  write_file "$etc/cgroup.conf" 644 <<<"# unused: proctrack/linuxproc and task/none need no cgroups"
}

link_system_conf() { # plain sbatch/squeue/sacct read /etc/slurm/slurm.conf; never clobber a real cluster's file
  local target=/etc/slurm/slurm.conf
  mkdir -p /etc/slurm
  if [ -e "$target" ] && [ ! -L "$target" ] && ! grep -q "generated by .*local-cluster/start.sh" "$target"; then
    say "warning: $target belongs to another cluster; left alone (export SLURM_CONF=$SLURM_CONF)"
    return
  fi
  ln -sfn "$SLURM_CONF" "$target.tmp" && mv -Tf "$target.tmp" "$target"
}

start_slurm() {
  alive "$state/slurmdbd.pid" slurmdbd || { rm -f "$state/slurmdbd.pid" && slurmdbd; }
  wait_for 30 slurmdbd "sacctmgr -n list cluster"
  sacctmgr -n -P list cluster format=Cluster | grep -qx "$cluster" || sacctmgr -i -Q add cluster "$cluster" >/dev/null
  alive "$state/slurmctld.pid" slurmctld || { rm -f "$state/slurmctld.pid" && slurmctld; }
  wait_for 30 slurmctld "scontrol ping"
  alive "$state/slurmd.pid" slurmd || { rm -f "$state/slurmd.pid" && slurmd; }
  wait_for 30 "node $host to register" "node_state | grep -qvE '^(unknown|)\\*?$'"
  if node_state | grep -qE '^(down|drained|draining|fail)'; then # e.g. after an unclean stop
    scontrol update NodeName="$host" State=RESUME
  fi
  wait_for 30 "node $host to be idle" node_up
}

start_munge
start_mariadb
say "munged and MariaDB up after $(elapsed) s"
make_fake_gpus
write_configs
link_system_conf
start_slurm
say "up after $(elapsed) s: partition $partition, node $host ($(nproc) CPUs, gpu:2), state in $state"
say "sbatch/squeue/sacct use /etc/slurm/slurm.conf -> $SLURM_CONF (or: export SLURM_CONF=$SLURM_CONF)"
