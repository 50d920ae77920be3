#!/usr/bin/env bash
# Install the Debian packages of the local SLURM cluster: SLURM with accounting, munge, MariaDB. start.sh (`make
# cluster-up`) calls it first. Idempotent and non-interactive; needs root only when something is missing.
set -euo pipefail
packages=(slurm-wlm slurmdbd munge mariadb-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "local-cluster: ${packages[*]} already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "local-cluster: error: installing ${missing[*]} needs root (sudo bash $0)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "local-cluster: apt-get update"
apt-get update -qq
echo "local-cluster: installing ${missing[*]}"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# start.sh runs private daemons; the packaged SLURM services would read its /etc/slurm/slurm.conf too
if [ -d /run/systemd/system ]; then
  systemctl disable --now slurmctld slurmd slurmdbd >/dev/null 2>&1 || true
fi
echo "local-cluster: installed ${missing[*]}"
