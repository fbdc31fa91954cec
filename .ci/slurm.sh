#!/usr/bin/env bash
# .ci/slurm.sh -- a throw-away "mini-LUMI" Slurm on localhost for the tests (Debian 12, Slurm 22.05).
#
# Usage (as root):  bash .ci/slurm.sh up | down | status | install
#
#   up       install the packages if missing, write /etc/slurm, start munge, MariaDB + slurmdbd,
#            slurmctld and one slurmd per node, register the CI account, wait until all nodes idle
#   down     stop ONLY the daemons `up` started, by the PIDs it recorded (SIGTERM, then SIGKILL
#            after 10 s), and remove the /etc/hosts lines it added
#   status   controller ping, partitions, and the recorded PIDs
#   install  apt-get the packages only
#
# The cluster is shaped like LUMI-G so that tests/workflow/test_slurm.py can run the pipeline with a profile
# derived from profiles/lumi: nodes nid001..nid004 with 128 CPUs, 480 GiB and 8 fake GPUs each
# (gres gpu:mi250:8 whose "device files" are links to /dev/null), the partitions dev-g, small-g and
# standard-g (full-node, exclusive) with LUMI's time limits, CPU nodes cpu001.. with small, standard
# and debug, and slurmdbd + MariaDB so that `sacct` (the plugin's status command and what the test
# reads back) and account validation work as on LUMI. The node names resolve to 127.0.0.1 (lines
# added to /etc/hosts), so a MASTER_ADDR taken from the job's node list works as it does on LUMI.
#
# Knobs (environment):
#   CI_SLURM_GPU_NODES (4)   CI_SLURM_CPU_NODES (2)   CI_SLURM_DBD (1: slurmdbd + MariaDB; 0: none)
#   CI_SLURM_ACCOUNTS ("project_465000001")  CI_SLURM_USERS ("$(id -un) $SUDO_USER")
#
# Needs: root, TCP on 127.0.0.1 (6817-6819, 17001+). No systemd, cgroups, mknod or real GPUs.
# From nothing to idle nodes takes about a minute here (most of it apt-get on the first run).
set -euo pipefail
NG=${CI_SLURM_GPU_NODES:-4}
NC=${CI_SLURM_CPU_NODES:-2}
DBD=${CI_SLURM_DBD:-1}
ACCOUNTS=${CI_SLURM_ACCOUNTS:-project_465000001}
USERS=${CI_SLURM_USERS:-"$(id -un) ${SUDO_USER:-}"}
H=$(hostname -s)
CONF=/etc/slurm
RUN=/run/slurm
LOG=/var/log/slurm
PIDS=/run/ci-slurm
HOSTS_TAG="# added by aqnet .ci/slurm.sh"

log() { echo "[ci-slurm $(date +%T)] $*" >&2; }

wait_for() { # wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it succeeds
  local t=$1 d=$2
  shift 2
  for _ in $(seq 1 $((t * 4))); do
    if "$@" >/dev/null 2>&1; then
      log "ready: $d"
      return 0
    fi
    sleep 0.25
  done
  log "timeout after ${t}s waiting for $d"
  return 1
}

node_list() { # node_list PREFIX COUNT -> nid[001-004], or nothing for COUNT 0
  [ "$2" -gt 0 ] || return 0
  printf '%s[001-%03d]' "$1" "$2"
}

all_nodes() {
  for i in $(seq 1 "$NG"); do printf 'nid%03d\n' "$i"; done
  for i in $(seq 1 "$NC"); do printf 'cpu%03d\n' "$i"; done
}

track() { # track SRC_PIDFILE NAME: wait for the forked daemon's pidfile, keep a copy in $PIDS
  wait_for 15 "$1" test -s "$1"
  cp "$1" "$PIDS/$2.pid"
}

stop_pidfiles() { # SIGTERM only the PIDs recorded in our own pidfiles; SIGKILL what is left after 10 s
  local f p
  local live=() still=()
  for f in "$@"; do
    [ -s "$f" ] || continue
    p=$(cat "$f")
    rm -f "$f"
    if kill -0 "$p" 2>/dev/null; then
      kill "$p"
      live+=("$p")
    fi
  done
  [ ${#live[@]} -gt 0 ] || return 0
  for _ in $(seq 1 40); do
    still=()
    for p in "${live[@]}"; do
      if kill -0 "$p" 2>/dev/null; then still+=("$p"); fi
    done
    [ ${#still[@]} -eq 0 ] && return 0
    sleep 0.25
  done
  for p in "${still[@]}"; do
    log "SIGKILL $p"
    kill -9 "$p" 2>/dev/null || true
  done
}

install_pkgs() {
  local pk="slurmctld slurmd slurm-client munge"
  [ "$DBD" = 1 ] && pk="$pk slurmdbd mariadb-server"
  log "apt-get install $pk"
  apt-get update -q
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pk
}

have_pkgs() {
  command -v slurmctld && command -v slurmd && command -v sinfo && command -v munged &&
    { [ "$DBD" != 1 ] || { command -v slurmdbd && command -v mariadbd; }; }
}

add_hosts() { # the node names resolve to this host, as LUMI's do to theirs
  remove_hosts
  echo "127.0.0.1 $(all_nodes | tr '\n' ' ')$HOSTS_TAG" >>/etc/hosts
}

remove_hosts() { # drop only the lines add_hosts wrote (rewrite in place: /etc/hosts may be a mount)
  if grep -qF "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    local kept
    kept=$(grep -vF "$HOSTS_TAG" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

write_conf() {
  local gn cn acct
  gn=$(node_list nid "$NG")
  cn=$(node_list cpu "$NC")
  mkdir -p "$CONF" "$RUN" "$LOG" "$PIDS" /var/spool/slurmctld "$PIDS/gpu"
  for i in 0 1 2 3 4 5 6 7; do ln -sfn /dev/null "$PIDS/gpu/dev$i"; done # fake GPU device files
  # With slurmdbd, sacct answers as on LUMI; job_comment keeps the plugin's `--comment rule_<name>`
  # so sacct also tells which rule each job ran.
  if [ "$DBD" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  # EnforcePartLimits=ALL: a request over a partition's limits fails at sbatch with a message
  # instead of pending forever. MinJobAge=300 as on LUMI (the plugin tunes its polling to it).
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
ReturnToService=2
EnforcePartLimits=ALL
MpiDefault=none
GresTypes=gpu
$acct
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
EOF
  if [ "$NG" -gt 0 ]; then
    # LUMI-G: 64 cores x 2 threads, 480 GiB for jobs, 8 GCDs; standard-g is whole nodes, 2 days;
    # small-g up to 4 nodes, 3 days; dev-g 3 hours.
    cat >>"$CONF/slurm.conf" <<EOF
NodeName=$gn NodeHostname=$H NodeAddr=127.0.0.1 Port=[17001-$((17000 + NG))] CPUs=128 SocketsPerBoard=1 CoresPerSocket=64 ThreadsPerCore=2 RealMemory=491520 Gres=gpu:mi250:8 State=UNKNOWN
PartitionName=small-g Nodes=$gn MaxNodes=4 MaxTime=3-00:00:00 State=UP
PartitionName=standard-g Nodes=$gn MaxTime=2-00:00:00 OverSubscribe=EXCLUSIVE State=UP
PartitionName=dev-g Nodes=$gn MaxTime=03:00:00 State=UP
EOF
  fi
  if [ "$NC" -gt 0 ]; then
    cat >>"$CONF/slurm.conf" <<EOF
NodeName=$cn NodeHostname=$H NodeAddr=127.0.0.1 Port=[17101-$((17100 + NC))] CPUs=256 SocketsPerBoard=2 CoresPerSocket=64 ThreadsPerCore=2 RealMemory=229376 State=UNKNOWN
PartitionName=small Nodes=$cn Default=YES MaxNodes=4 MaxTime=3-00:00:00 State=UP
PartitionName=standard Nodes=$cn MaxTime=2-00:00:00 OverSubscribe=EXCLUSIVE State=UP
PartitionName=debug Nodes=$cn MaxTime=00:30:00 State=UP
EOF
  fi
  echo "AutoDetect=off" >"$CONF/gres.conf"
  if [ "$NG" -gt 0 ]; then
    echo "NodeName=$gn Name=gpu Type=mi250 File=$PIDS/gpu/dev[0-7]" >>"$CONF/gres.conf"
  fi
  if [ "$DBD" = 1 ]; then
    cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF/slurmdbd.conf"
  fi
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  track /run/munge/munged.pid munged
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_dbd() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  rm -f /run/mysqld/mysqld.pid
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --skip-networking \
    >"$LOG/mariadb.log" 2>&1 </dev/null &
  wait_for 30 mariadb mariadb-admin ping
  track /run/mysqld/mysqld.pid mariadbd
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  rm -f "$RUN/slurmdbd.pid"
  slurmdbd
  track "$RUN/slurmdbd.pid" slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  sacctmgr -i add cluster ci >/dev/null || true
  local a u
  for a in $ACCOUNTS; do
    sacctmgr -i add account "$a" Description=ci Organization=ci >/dev/null || true
  done
  for u in $USERS; do
    for a in $ACCOUNTS; do sacctmgr -i add user "$u" Account="$a" >/dev/null || true; done
    sacctmgr -i modify user "$u" set DefaultAccount="${ACCOUNTS%% *}" >/dev/null || true
  done
}

up() {
  [ "$(id -u)" = 0 ] || {
    log "must run as root"
    exit 1
  }
  down
  have_pkgs >/dev/null || install_pkgs
  write_conf
  add_hosts
  start_munge
  [ "$DBD" = 1 ] && start_dbd
  rm -rf /var/spool/slurmctld/* # fresh controller state each time (no stale DRAIN etc.)
  rm -f "$RUN/slurmctld.pid"
  slurmctld
  track "$RUN/slurmctld.pid" slurmctld
  wait_for 30 slurmctld sh -c 'scontrol ping | grep -q UP'
  local n
  for n in $(all_nodes); do
    mkdir -p "/var/spool/slurmd/$n"
    rm -f "$RUN/slurmd-$n.pid"
    slurmd -N "$n"
    track "$RUN/slurmd-$n.pid" "slurmd-$n"
  done
  wait_for 60 "nodes idle" \
    sh -c "[ \"\$(sinfo -h -N -t idle -o '%N' | sort -u | wc -l)\" = $((NG + NC)) ]"
  sinfo
}

down() {
  stop_pidfiles "$PIDS"/slurmd-*.pid
  stop_pidfiles "$PIDS/slurmctld.pid"
  stop_pidfiles "$PIDS/slurmdbd.pid"
  stop_pidfiles "$PIDS/mariadbd.pid" "$PIDS/munged.pid"
  remove_hosts
}

status() { # exit 0 when the controller answers, 1 otherwise
  local rc=0
  scontrol ping | head -n 1 || rc=1
  scontrol ping 2>/dev/null | grep -q UP || rc=1
  sinfo 2>/dev/null || true
  ls "$PIDS"/*.pid 2>/dev/null || true
  return $rc
}

case "${1:-}" in
  install) install_pkgs ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status|install" >&2
    exit 2
    ;;
esac
