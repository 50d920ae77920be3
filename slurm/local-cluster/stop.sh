#!/usr/bin/env bash
# Stop the local cluster started by start.sh: each daemon by the PID in its PID file (never by name), after
# checking that the PID still belongs to that daemon; waits for each to exit. Idempotent. State is kept, so
# start.sh brings back the same cluster (accounting history included).
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
state=${SLURM_LOCAL_DIR:-$repo/.slurm-local}

stop_daemon() { # stop_daemon NAME PIDFILE
  local name=$1 file=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid"
    for _ in $(seq 150); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      echo "local-cluster: $name ($pid) still running 15 s after SIGTERM; sending SIGKILL"
      kill -9 "$pid"
    fi
    echo "local-cluster: stopped $name ($pid)"
  fi
  rm -f "$file"
}

stop_daemon slurmd "$state/slurmd.pid"
stop_daemon slurmctld "$state/slurmctld.pid"
stop_daemon slurmdbd "$state/slurmdbd.pid"
stop_daemon mariadbd "$state/mysqld/mysqld.pid"
stop_daemon munged "$state/munge/munged.pid"
exit 0
