#!/usr/bin/env bash
# dev/cluster.sh — a single-node SLURM 22.05 + Apptainer + sshd dev cluster for hpcgear.
#
#   bash dev/cluster.sh up       install, configure and start everything (idempotent)
#   bash dev/cluster.sh down     stop what `up` started (by pid file; never MariaDB/PostgreSQL)
#   bash dev/cluster.sh status   print each component; exit 0 only if all are up
#
# Run as root on Debian bookworm. State lives under HPCGEAR_DEV_ROOT (default
# /var/lib/hpcgear-dev) and survives across runs: the Debian sid root filesystem that
# carries Apptainer and the smoke SIF are cached there, keyed by the sha256 of their
# recipe, so a second `up` only checks that everything still runs.
# Daemons are only ever signalled through their pid files under the state root.
set -euo pipefail

ROOT=${HPCGEAR_DEV_ROOT:-/var/lib/hpcgear-dev}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SITE_TEMPLATE=$SCRIPT_DIR/dev-site.yaml.template

CLUSTER=hpcgear-dev
ACCOUNT=hpcgear-dev
PARTITION=debug
NODE=$(hostname -s)
SLURM_ETC=/etc/slurm
SSH_HOST=127.0.0.1
SSH_PORT=2222
SSH_USER=root
SID_SUITE=sid
# gocryptfs and fuse-overlayfs are optional for Apptainer; without them every exec prints
# "INFO: gocryptfs not found" on stderr.
SID_INCLUDE=apptainer,squashfs-tools,squashfuse,fuse2fs,fuse-overlayfs,gocryptfs,uidmap,ca-certificates,busybox-static
PACKAGES=(slurm-wlm slurmdbd slurm-client munge debootstrap bubblewrap openssh-server
          openssh-client mariadb-client ca-certificates)

RUN=$ROOT/run
LOGDIR=$ROOT/log
SSH_DIR=$ROOT/ssh
WRAPPER=$ROOT/bin/apptainer
SMOKE_SIF=$ROOT/images/smoke-busybox.sif
STARTED_AT=$SECONDS

log() { printf '==> %s (%ss)\n' "$*" "$((SECONDS - STARTED_AT))"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

# pid_alive PIDFILE EXE: print the pid and succeed if PIDFILE names a live process whose
# executable is EXE (guards against a stale pid file naming a recycled pid).
pid_alive() {
    local pidfile=$1 exe=$2 pid real
    [[ -s $pidfile ]] || return 1
    pid=$(head -n1 "$pidfile" 2>/dev/null | tr -d '[:space:]') || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    real=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    real=${real% (deleted)}
    # /usr/sbin/slurmctld and slurmd are alternatives symlinks (to slurmctld-wlm ...).
    [[ $real == "$(readlink -f "$exe")" ]] || return 1
    printf '%s\n' "$pid"
}

# stop_pidfile NAME PIDFILE EXE: TERM the daemon named by PIDFILE and wait for it to exit.
stop_pidfile() {
    local name=$1 pidfile=$2 exe=$3 pid i
    if ! pid=$(pid_alive "$pidfile" "$exe"); then
        rm -f "$pidfile"
        note "$name: not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        [[ -e /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -e /proc/$pid ]]; then
        note "$name (pid $pid) ignored TERM for 30 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
    note "$name: stopped (pid $pid)"
}

# wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds or time runs out.
wait_for() {
    local limit=$1 end
    shift
    end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

# start_daemon NAME PIDFILE EXE LOGFILE CMD...: start a self-daemonising server unless its
# pid file names a live process, then wait until the pid file does.
start_daemon() {
    local name=$1 pidfile=$2 exe=$3 logfile=$4 pid
    shift 4
    if pid=$(pid_alive "$pidfile" "$exe"); then
        note "$name: running (pid $pid)"
        return 0
    fi
    rm -f "$pidfile"
    # fd 9 is the `up` lock: daemons must not inherit it, nor our stdout.
    "$@" </dev/null >>"$LOGDIR/$name.stdout" 2>&1 9>&- ||
        { tail -n 20 "$LOGDIR/$name.stdout" "$logfile" 2>/dev/null >&2 || true; die "$name failed to start"; }
    if ! wait_for 30 pid_alive "$pidfile" "$exe"; then
        tail -n 30 "$logfile" "$LOGDIR/$name.stdout" >&2 2>/dev/null || true
        die "$name did not come up (no live pid in $pidfile); see $logfile"
    fi
    note "$name: started (pid $(pid_alive "$pidfile" "$exe"))"
}

# put_file DEST MODE: write stdin to DEST (atomically) only if the content differs.
# Succeeds (0) if the file changed, fails (1) if it was already up to date.
put_file() {
    # Callers use the status in conditions, where `set -e` is off: fail loudly here.
    local dest=$1 mode=$2 tmp
    [[ -d $(dirname "$dest") ]] || install -d -m 755 "$(dirname "$dest")" ||
        die "cannot create $(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX") || die "cannot create a temporary file next to $dest"
    cat >"$tmp" || die "cannot write $tmp"
    chmod "$mode" "$tmp" || die "cannot chmod $tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        chmod "$mode" "$dest"
        return 1
    fi
    mv -f "$tmp" "$dest" || die "cannot move $tmp to $dest"
    return 0
}

sha256_of() { sha256sum | cut -c1-16; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (this script installs packages and starts daemons)"; }

check_root_path() {
    [[ $ROOT == /* && $ROOT != / ]] || die "HPCGEAR_DEV_ROOT must be an absolute path, not '$ROOT'"
    [[ $ROOT != *[[:space:]\|\&\;\'\"\\]* ]] ||
        die "HPCGEAR_DEV_ROOT must not contain spaces, quotes or |&;\\: '$ROOT'"
}

# ---------------------------------------------------------------------------------------
# 1. packages and the databases
# ---------------------------------------------------------------------------------------

ensure_packages() {
    local missing=() p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
        [[ $status == ii* ]] || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all installed"
        return 0
    fi
    log "packages: installing ${missing[*]}"
    # Keep maintainer scripts from starting the system's own slurm/munge/ssh daemons:
    # everything here is started by this script, from pid files under the state root.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, written by hpcgear dev/cluster.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${missing[@]}"
    } >"$LOGDIR/apt.log" 2>&1 || rc=$?
    if ((created_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    if ((rc != 0)); then
        tail -n 30 "$LOGDIR/apt.log" >&2
        die "apt-get failed (exit $rc); full log: $LOGDIR/apt.log"
    fi
    note "installed (log: $LOGDIR/apt.log)"
}

mariadb_ok() { mysqladmin --connect-timeout=3 -h127.0.0.1 -uroot ping; }

ensure_mariadb() {
    if mariadb_ok >/dev/null 2>&1; then
        log "mariadb: running on 127.0.0.1:3306"
        return 0
    fi
    log "mariadb: not answering; starting it"
    install -d -o mysql -g mysql -m 755 /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd 9>&-
    wait_for 60 mariadb_ok || die "MariaDB did not answer on 127.0.0.1:3306 within 60 s"
    note "mariadb: up"
}

pg_ok() { port_open 127.0.0.1 5432; }

ensure_postgres() {
    if pg_ok; then
        log "postgresql: running on 127.0.0.1:5432"
        return 0
    fi
    log "postgresql: not answering; starting it"
    local v
    v=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
    [[ -n $v ]] || die "no PostgreSQL cluster under /etc/postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start 9>&-
    wait_for 60 pg_ok || die "PostgreSQL did not answer on 127.0.0.1:5432 within 60 s"
    note "postgresql: up"
}

# ---------------------------------------------------------------------------------------
# 2. munge
# ---------------------------------------------------------------------------------------

MUNGE_PID=$RUN/munge/munged.pid

ensure_munge() {
    log "munge: checking key and daemon"
    install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 755 "$RUN/munge"
    if [[ ! -s /etc/munge/munge.key ]]; then
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
        note "munge: created /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    start_daemon munged "$MUNGE_PID" /usr/sbin/munged /var/log/munge/munged.log \
        setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --pid-file="$MUNGE_PID"
    wait_for 15 bash -c 'munge -n | unmunge' || die "munge round trip (munge -n | unmunge) fails"
}

# ---------------------------------------------------------------------------------------
# 3. SLURM: slurmdbd on MariaDB, slurmctld, slurmd
# ---------------------------------------------------------------------------------------

SLURMCTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
SLURMDBD_PID=$RUN/slurmdbd.pid

node_hardware() {
    # CPU topology as slurmd sees it, so slurmctld never drains the node for a mismatch.
    local line cpus boards spb cps tpc mem
    line=$(slurmd -C 2>/dev/null | head -n1 || true)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    boards=$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<<"$line")
    spb=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$line")
    cps=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$line")
    tpc=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    if [[ -z $cpus || -z $spb || -z $cps || -z $tpc || -z $mem ]]; then
        cpus=$(nproc) boards=1 spb=1 cps=$(nproc) tpc=1
        mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    fi
    # Advertise at most ~8000 MB (and leave the OS 512 MB on a small machine).
    local real=8000
    ((mem - 512 < real)) && real=$((mem - 512))
    printf 'CPUs=%s Boards=%s SocketsPerBoard=%s CoresPerSocket=%s ThreadsPerCore=%s RealMemory=%s\n' \
        "$cpus" "${boards:-1}" "$spb" "$cps" "$tpc" "$real"
}

# first_job_id: job ids continue after the ones slurmdbd already recorded, so a wiped
# state root never reuses an id that sacct still knows (ids would then be ambiguous).
# Computed once per state root and kept there, so slurm.conf stays stable.
first_job_id() {
    local f=$ROOT/slurm/first_job_id n
    if [[ ! -s $f ]]; then
        n=$(mysql -h127.0.0.1 -uroot -N -B slurm_acct_db \
            -e "SELECT COALESCE(MAX(id_job), 0) + 1 FROM \`${CLUSTER}_job_table\`" 2>/dev/null) || n=1
        [[ $n =~ ^[0-9]+$ ]] || n=1
        mkdir -p "$ROOT/slurm"
        printf '%s\n' "$n" >"$f"
    fi
    head -n1 "$f"
}

write_slurm_conf() {
    local hw first
    hw=$(node_hardware)
    first=$(first_job_id)
    put_file "$SLURM_ETC/slurm.conf" 644 <<EOF
# Written by hpcgear dev/cluster.sh; rewritten on every \`up\`. Edit the script instead.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true

StateSaveLocation=$ROOT/slurm/state
SlurmdSpoolDir=$ROOT/slurm/spool
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none

ReturnToService=2
FirstJobId=$first
MaxArraySize=1001
MaxJobCount=20000
MinJobAge=30
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MessageTimeout=10
BatchStartTimeout=30
UnkillableStepTimeout=120
Waittime=0

NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=02:00:00 State=UP
PartitionName=short Nodes=$NODE MaxTime=00:10:00 State=UP
EOF
}

write_cgroup_conf() {
    put_file "$SLURM_ETC/cgroup.conf" 644 <<EOF
# Written by hpcgear dev/cluster.sh.
CgroupPlugin=cgroup/v1
CgroupAutomount=yes
ConstrainCores=yes
ConstrainRAMSpace=yes
EOF
}

slurmdb_password() {
    local f=$ROOT/secrets/slurmdbd.pass
    if [[ ! -s $f ]]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$f")
    fi
    cat "$f"
}

ensure_slurmdb_user() {
    local pw=$1
    if MYSQL_PWD=$pw mysql -h127.0.0.1 -uslurm slurm_acct_db -e 'select 1' >/dev/null 2>&1; then
        return 0
    fi
    note "mariadb: creating DB user slurm with grants on slurm_acct_db"
    mysql -h127.0.0.1 -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
    MYSQL_PWD=$pw mysql -h127.0.0.1 -uslurm slurm_acct_db -e 'select 1' >/dev/null ||
        die "DB user slurm still cannot log in to slurm_acct_db"
}

write_slurmdbd_conf() {
    local pw=$1
    put_file "$SLURM_ETC/slurmdbd.conf" 600 <<EOF
# Written by hpcgear dev/cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$SLURMDBD_PID
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
EOF
}

sacctmgr_q() { timeout 20 sacctmgr -n -P "$@"; }

slurmdbd_ok() { sacctmgr_q list cluster format=Cluster; }

node_state() { timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

node_usable() {
    case $(node_state) in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

ensure_slurm() {
    log "slurm: configuration"
    install -d -m 755 "$SLURM_ETC" "$ROOT/slurm" "$ROOT/slurm/state" "$ROOT/slurm/spool"
    install -d -m 700 "$ROOT/secrets"
    local slurm_changed=0 dbd_changed=0 pw
    write_slurm_conf && slurm_changed=1
    write_cgroup_conf && slurm_changed=1
    pw=$(slurmdb_password)
    ensure_slurmdb_user "$pw"
    write_slurmdbd_conf "$pw" && dbd_changed=1
    ((slurm_changed)) && note "slurm.conf/cgroup.conf changed"
    ((dbd_changed)) && note "slurmdbd.conf changed"

    if ((dbd_changed)) && pid_alive "$SLURMDBD_PID" /usr/sbin/slurmdbd >/dev/null; then
        stop_pidfile slurmdbd "$SLURMDBD_PID" /usr/sbin/slurmdbd
    fi
    if ((slurm_changed)); then
        pid_alive "$SLURMD_PID" /usr/sbin/slurmd >/dev/null &&
            stop_pidfile slurmd "$SLURMD_PID" /usr/sbin/slurmd
        pid_alive "$SLURMCTLD_PID" /usr/sbin/slurmctld >/dev/null &&
            stop_pidfile slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld
    fi

    log "slurm: slurmdbd"
    start_daemon slurmdbd "$SLURMDBD_PID" /usr/sbin/slurmdbd "$LOGDIR/slurmdbd.log" /usr/sbin/slurmdbd
    wait_for 90 slurmdbd_ok || {
        tail -n 30 "$LOGDIR/slurmdbd.log" >&2
        die "slurmdbd does not answer sacctmgr within 90 s"
    }
    if ! sacctmgr_q list cluster format=Cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        note "registered cluster $CLUSTER"
    fi
    if ! sacctmgr_q list account "$ACCOUNT" format=Account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="hpcgear dev" Organization=hpcgear >/dev/null
        note "added account $ACCOUNT"
    fi
    if ! sacctmgr_q list assoc where user=root account="$ACCOUNT" cluster="$CLUSTER" \
        format=User | grep -qx root; then
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
        note "added user root to account $ACCOUNT"
    fi
    if [[ $(sacctmgr_q list user root format=DefaultAccount) != "$ACCOUNT" ]]; then
        sacctmgr -i modify user root set DefaultAccount="$ACCOUNT" >/dev/null
        note "root's default account is now $ACCOUNT"
    fi

    log "slurm: slurmctld and slurmd"
    start_daemon slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld "$LOGDIR/slurmctld.log" /usr/sbin/slurmctld
    wait_for 30 timeout 10 scontrol ping || die "slurmctld does not answer scontrol ping"
    start_daemon slurmd "$SLURMD_PID" /usr/sbin/slurmd "$LOGDIR/slurmd.log" /usr/sbin/slurmd

    local state i
    for ((i = 0; i < 180; i++)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) break ;;
            down | drained | draining | drain | fail | failing)
                note "node $NODE is $state; resuming it"
                scontrol update nodename="$NODE" state=resume || true
                ;;
        esac
        sleep 0.5
    done
    node_usable || {
        tail -n 20 "$LOGDIR/slurmd.log" >&2
        die "node $NODE did not become idle within 90 s (state: ${state:-unknown})"
    }
    note "node $NODE is $state"
}

# ---------------------------------------------------------------------------------------
# 4. Apptainer from a private Debian sid root filesystem, run through bwrap
# ---------------------------------------------------------------------------------------

debian_mirror() {
    local url=""
    url=$(awk '/^[[:space:]]*URIs:/ {for (i = 2; i <= NF; i++) print $i}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -E '^https?://' | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
    if [[ -z $url ]]; then
        url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(https\?:[^[:space:]]*\).*/\2/p' |
            grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
    fi
    printf '%s\n' "${url:-http://deb.debian.org/debian}"
}

SIDROOT=""

ensure_sid_rootfs() {
    local mirror recipe hash dir tmp
    mirror=$(debian_mirror)
    recipe="debootstrap --variant=minbase --include=$SID_INCLUDE $SID_SUITE <dir> $mirror"
    hash=$(printf '%s\n' "$recipe" | sha256_of)
    dir=$ROOT/cache/sid-rootfs-$hash
    SIDROOT=$dir
    if [[ -x $dir/usr/bin/apptainer && -e $dir/.hpcgear-complete ]]; then
        log "apptainer: cached sid rootfs $dir"
        return 0
    fi
    log "apptainer: debootstrap $SID_SUITE from $mirror (about 30 s)"
    install -d -m 755 "$ROOT/cache"
    tmp=$dir.partial
    if [[ -e $tmp ]]; then
        # A previous run died half way: make sure nothing is still mounted inside.
        local m
        while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
            awk -v p="$tmp" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/mounts | sort -r)
        rm -rf --one-file-system "$tmp"
    fi
    if ! debootstrap --variant=minbase --include="$SID_INCLUDE" "$SID_SUITE" "$tmp" "$mirror" \
        >"$LOGDIR/debootstrap.log" 2>&1; then
        tail -n 30 "$LOGDIR/debootstrap.log" >&2
        [[ -f $tmp/debootstrap/debootstrap.log ]] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
        die "debootstrap of $SID_SUITE failed; log: $LOGDIR/debootstrap.log"
    fi
    [[ -x $tmp/usr/bin/apptainer ]] || die "debootstrap finished but $tmp/usr/bin/apptainer is missing"
    printf '%s\n' "$recipe" >"$tmp/.hpcgear-recipe"
    date -u +%FT%TZ >"$tmp/.hpcgear-complete"
    rm -rf --one-file-system "$dir"
    mv "$tmp" "$dir"
    # Superseded root filesystems (another recipe) are ~400 MB each: drop them.
    local old
    for old in "$ROOT"/cache/sid-rootfs-*; do
        [[ $old == "$dir" || $old == *.partial || ! -e $old/.hpcgear-complete ]] && continue
        rm -rf --one-file-system "$old"
        note "removed superseded $old"
    done
    note "sid rootfs ready: $dir ($(chroot "$dir" apptainer --version 2>/dev/null || echo '?'))"
}

wrapper_text() {
    cat <<EOF
#!/bin/bash
# Generated by hpcgear dev/cluster.sh. Runs Debian sid's Apptainer inside a bubblewrap
# root made of the cached sid root filesystem, with the host paths jobs need bound in
# (the state root, /work, /var/lib/hpcgear*, /tmp, the current directory and every path
# in HPCGEAR_APPTAINER_BINDS, colon-separated). Arguments pass through unchanged, except
# that --userns is added after the subcommand of exec/run/shell/test/instance start|run
# (the sandbox lacks CAP_SYS_RESOURCE, so Apptainer's setuid/root path fails there).
set -euo pipefail
SIDROOT='$SIDROOT'
DEVROOT='$ROOT'
EOF
    cat <<'EOF'
args=("$@")
n=${#args[@]}
i=0
while ((i < n)); do
    case ${args[i]} in
        -c | --config) i=$((i + 2)) ;;
        -*) i=$((i + 1)) ;;
        *) break ;;
    esac
done
if ((i < n)); then
    case ${args[i]} in
        exec | run | shell | test)
            args=("${args[@]:0:i+1}" --userns "${args[@]:i+1}") ;;
        instance)
            if ((i + 1 < n)) && [[ ${args[i+1]} == start || ${args[i+1]} == run ]]; then
                args=("${args[@]:0:i+2}" --userns "${args[@]:i+2}")
            fi ;;
    esac
fi

binds=(--bind "$SIDROOT" / --bind /proc /proc --dev-bind /dev /dev --bind /sys /sys
       --bind /tmp /tmp --bind /etc/hosts /etc/hosts)
add_bind() {
    local p=$1
    [[ $p == /* && -e $p ]] || return 0
    case $p in
        / | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /tmp | /tmp/* | /usr | /usr/* | \
        /bin | /bin/* | /sbin | /sbin/* | /lib | /lib/* | /lib32 | /lib32/* | /lib64 | /lib64/* | \
        /etc | /var | /run | /boot | /root) return 0 ;;
    esac
    local b
    for b in "${bound[@]}"; do [[ $b == "$p" ]] && return 0; done
    bound+=("$p")
    binds+=(--bind "$p" "$p")
}
bound=()
shopt -s nullglob
add_bind "$DEVROOT"
add_bind /work
for d in /var/lib/hpcgear*; do [[ -d $d ]] && add_bind "$d"; done
cwd=$(pwd -P 2>/dev/null || echo /)
add_bind "$cwd"
if [[ -n ${HPCGEAR_APPTAINER_BINDS:-} ]]; then
    IFS=: read -r -a extra <<<"$HPCGEAR_APPTAINER_BINDS"
    for p in "${extra[@]}"; do [[ -n $p ]] && add_bind "$p"; done
fi
# Host paths named in Apptainer's own -B/--bind, --mount, -W/--workdir and --env-file
# options must exist inside the sandbox too: bind their sources at the same path.
bind_sources() {
    local spec=$1 part src
    local -a parts
    IFS=, read -r -a parts <<<"$spec"
    for part in "${parts[@]}"; do
        case $part in
            source=* | src=*) src=${part#*=} ;;
            type=* | destination=* | dst=* | target=* | ro | rw | readonly) continue ;;
            *) src=${part%%:*} ;;
        esac
        add_bind "$src"
    done
}
for ((j = 0; j < ${#args[@]}; j++)); do
    a=${args[j]}
    case $a in
        -B | --bind | --mount | -W | --workdir | --env-file)
            ((j + 1 < ${#args[@]})) && bind_sources "${args[j+1]}" ;;
        --bind=* | --mount=* | --workdir=* | --env-file=* | -B=* | -W=*)
            bind_sources "${a#*=}" ;;
    esac
done

# bwrap does not forward signals to its child, so run it in the background and pass
# TERM/INT/HUP/QUIT/USR1/USR2 on to the child (Apptainer's starter forwards them into
# the container). Stdin is handed over explicitly (background jobs get /dev/null).
exec 3<&0
# Keep the caller's directory when it is visible inside the sandbox (bound, or under /tmp
# or the state root); otherwise (e.g. it lives under /usr) start in /.
chdir=/
for b in /tmp "${bound[@]}"; do
    if [[ $cwd == "$b" || $cwd == "$b"/* ]]; then chdir=$cwd; break; fi
done
/usr/bin/bwrap "${binds[@]}" --chdir "$chdir" --cap-add ALL \
    --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /usr/bin/apptainer "${args[@]}" <&3 3<&- &
child=$!
exec 3<&-
forward() {
    local sig=$1 kids="" k
    kids=$(cat "/proc/$child/task/$child/children" 2>/dev/null || true)
    if [[ -n $kids ]]; then
        for k in $kids; do kill -s "$sig" "$k" 2>/dev/null || true; done
    else
        kill -s "$sig" "$child" 2>/dev/null || true
    fi
}
# shellcheck disable=SC2064 # expand $s now, on purpose
for s in TERM INT HUP QUIT USR1 USR2; do trap "forward $s" "$s"; done
while :; do
    rc=0
    wait "$child" || rc=$?
    if ((rc > 128)) && kill -0 "$child" 2>/dev/null; then
        continue   # interrupted by a forwarded signal; the child still runs
    fi
    exit "$rc"
done
EOF
}

ensure_apptainer() {
    ensure_sid_rootfs
    local text
    text=$(wrapper_text)
    if put_file "$WRAPPER" 755 <<<"$text"; then
        note "wrote $WRAPPER"
    fi
    "$WRAPPER" --version >/dev/null 2>&1 || die "$WRAPPER --version fails"
    log "apptainer: $("$WRAPPER" --version) via $WRAPPER"
}

# ---------------------------------------------------------------------------------------
# 5. the smoke SIF: a static busybox, built from a directory root filesystem
# ---------------------------------------------------------------------------------------

SMOKE_APPLETS="sh ash cat echo env false head id ls mkdir printf pwd rm sleep tail test true \
wc uname sha256sum cp mv sed grep dd hostname date touch kill"

ensure_smoke_sif() {
    local busybox recipe hash stamp=$SMOKE_SIF.recipe-sha256 build tmp a
    busybox=$SIDROOT/usr/bin/busybox
    [[ -x $busybox ]] || busybox=$SIDROOT/bin/busybox
    [[ -x $busybox ]] || die "no static busybox in $SIDROOT (busybox-static missing?)"
    recipe="smoke-busybox v1
busybox $(sha256sum <"$busybox" | cut -d' ' -f1)
applets $SMOKE_APPLETS"
    hash=$(printf '%s\n' "$recipe" | sha256_of)
    install -d -m 755 "$ROOT/images" "$ROOT/scratch" "$ROOT/build"
    if [[ -s $SMOKE_SIF && -s $stamp && $(cat "$stamp") == "$hash" ]]; then
        log "apptainer: cached $SMOKE_SIF (recipe $hash)"
        return 0
    fi
    log "apptainer: building $SMOKE_SIF (recipe $hash)"
    build=$ROOT/build/smoke-busybox-$hash
    rm -rf --one-file-system "$build"
    install -d -m 755 "$build/bin" "$build/etc" "$build/tmp" "$build/root" "$build/proc" \
        "$build/sys" "$build/dev" "$build/home"
    chmod 1777 "$build/tmp"
    install -m 755 "$busybox" "$build/bin/busybox"
    for a in $SMOKE_APPLETS; do ln -s busybox "$build/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$build/etc/passwd"
    printf 'root:x:0:\n' >"$build/etc/group"
    printf '%s\n' "$recipe" >"$build/etc/hpcgear-smoke-recipe"
    tmp=$ROOT/images/.smoke-busybox.$$.sif
    rm -f "$tmp"
    if ! (cd "$ROOT" && "$WRAPPER" build --force "$tmp" "$build") >"$LOGDIR/smoke-build.log" 2>&1; then
        tail -n 30 "$LOGDIR/smoke-build.log" >&2
        rm -f "$tmp"
        die "apptainer build of the smoke SIF failed; log: $LOGDIR/smoke-build.log"
    fi
    mv -f "$tmp" "$SMOKE_SIF"
    printf '%s\n' "$hash" >"$stamp"
    rm -rf --one-file-system "$build"
    note "built $SMOKE_SIF"
}

check_apptainer_run() {
    local out
    out=$(cd "$ROOT" && "$WRAPPER" exec --containall --cleanenv "$SMOKE_SIF" echo hpcgear-smoke-ok 2>&1) ||
        die "running the smoke SIF fails: $out"
    [[ $out == *hpcgear-smoke-ok* ]] || die "smoke SIF printed '$out' instead of hpcgear-smoke-ok"
    note "smoke SIF runs"
}

# ---------------------------------------------------------------------------------------
# 6. a private sshd on 127.0.0.1:2222 for the SSH transport
# ---------------------------------------------------------------------------------------

SSHD_PID=$SSH_DIR/sshd.pid

ssh_ok() {
    timeout 20 ssh -n -i "$SSH_DIR/id_ed25519" -o UserKnownHostsFile="$SSH_DIR/known_hosts" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 \
        -p "$SSH_PORT" "$SSH_USER@$SSH_HOST" "$@"
}

ensure_sshd() {
    log "sshd: private sshd on $SSH_HOST:$SSH_PORT"
    install -d -m 700 "$SSH_DIR"
    install -d -m 755 /run/sshd
    [[ -s $SSH_DIR/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "hpcgear-dev-sshd" -f "$SSH_DIR/ssh_host_ed25519_key"
    [[ -s $SSH_DIR/id_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "hpcgear-dev-client" -f "$SSH_DIR/id_ed25519"
    local changed=0
    put_file "$SSH_DIR/authorized_keys" 600 <"$SSH_DIR/id_ed25519.pub" && changed=1
    printf '[%s]:%s %s\n' "$SSH_HOST" "$SSH_PORT" \
        "$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" |
        put_file "$SSH_DIR/known_hosts" 644 || true
    put_file "$SSH_DIR/sshd_config" 600 <<EOF && changed=1
# Written by hpcgear dev/cluster.sh: a second sshd, only for hpcgear's SSH transport tests.
Port $SSH_PORT
ListenAddress $SSH_HOST
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
X11Forwarding no
AllowTcpForwarding no
PermitTunnel no
PrintMotd no
MaxStartups 50:30:100
MaxSessions 50
LogLevel INFO
SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" || die "sshd rejects $SSH_DIR/sshd_config"
    if ((changed)) && pid_alive "$SSHD_PID" /usr/sbin/sshd >/dev/null; then
        stop_pidfile sshd "$SSHD_PID" /usr/sbin/sshd
    fi
    start_daemon sshd "$SSHD_PID" /usr/sbin/sshd "$LOGDIR/sshd.log" \
        /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$LOGDIR/sshd.log"
    wait_for 15 ssh_ok true || die "ssh to $SSH_USER@$SSH_HOST:$SSH_PORT with $SSH_DIR/id_ed25519 fails"
    ssh_ok 'command -v sbatch squeue' >/dev/null ||
        die "an ssh login on port $SSH_PORT cannot find sbatch/squeue on PATH"
    note "ssh login works and finds sbatch/squeue"
}

# ---------------------------------------------------------------------------------------
# 8./9. env.sh and the rendered site config
# ---------------------------------------------------------------------------------------

pg_url() {
    local role
    for role in postgres root; do
        if timeout 10 psql -h 127.0.0.1 -U "$role" -d test -Atc 'select 1' >/dev/null 2>&1; then
            printf 'postgresql://%s@127.0.0.1:5432/test\n' "$role"
            return 0
        fi
    done
    note "WARNING: neither role postgres nor root can log in to database test on 127.0.0.1:5432" >&2
    printf 'postgresql://postgres@127.0.0.1:5432/test\n'
}

write_env() {
    local pg
    pg=$(pg_url)
    put_file "$ROOT/env.sh" 644 <<EOF || true
# Written by hpcgear dev/cluster.sh up. Use: source $ROOT/env.sh
export HPCGEAR_DEV_ROOT=$ROOT
export HPCGEAR_DEV_SITE=$ROOT/site.yaml
export HPCGEAR_APPTAINER=$WRAPPER
export HPCGEAR_SLURM_PARTITION=$PARTITION
export HPCGEAR_SLURM_NODE=$NODE
export HPCGEAR_SSH_HOST=$SSH_HOST
export HPCGEAR_SSH_PORT=$SSH_PORT
export HPCGEAR_SSH_USER=$SSH_USER
export HPCGEAR_SSH_KEY=$SSH_DIR/id_ed25519
export HPCGEAR_SSH_KNOWN_HOSTS=$SSH_DIR/known_hosts
export HPCGEAR_SMOKE_SIF=$SMOKE_SIF
export HPCGEAR_PG_URL=$pg
EOF
    log "env: $ROOT/env.sh"
}

render_site() {
    if [[ ! -f $SITE_TEMPLATE ]]; then
        log "site: $SITE_TEMPLATE not found; skipping $ROOT/site.yaml"
        return 0
    fi
    sed -e "s|@ROOT@|$ROOT|g" \
        -e "s|@APPTAINER@|$WRAPPER|g" \
        -e "s|@PARTITION@|$PARTITION|g" \
        -e "s|@NODE@|$NODE|g" \
        -e "s|@SSH_PORT@|$SSH_PORT|g" \
        -e "s|@SSH_KEY@|$SSH_DIR/id_ed25519|g" \
        -e "s|@SSH_KNOWN_HOSTS@|$SSH_DIR/known_hosts|g" \
        -e "s|@SSH_USER@|$SSH_USER|g" \
        "$SITE_TEMPLATE" | put_file "$ROOT/site.yaml" 644 || true
    if grep -q '@[A-Z_]*@' "$ROOT/site.yaml"; then
        note "WARNING: $ROOT/site.yaml still has unknown placeholders: $(grep -o '@[A-Z_]*@' "$ROOT/site.yaml" | sort -u | tr '\n' ' ')"
    fi
    log "site: rendered $SITE_TEMPLATE -> $ROOT/site.yaml"
}

# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------

prepare_root() {
    install -d -m 755 "$ROOT" "$RUN" "$LOGDIR" "$ROOT/scratch" "$ROOT/images"
    exec 9>"$ROOT/.cluster.lock"
    flock -w 900 9 || die "another dev/cluster.sh holds $ROOT/.cluster.lock"
}

cmd_up() {
    need_root
    check_root_path
    prepare_root
    log "up: state root $ROOT, node $NODE"
    ensure_packages
    ensure_mariadb
    ensure_postgres
    ensure_munge
    ensure_slurm
    ensure_apptainer
    ensure_smoke_sif
    check_apptainer_run
    ensure_sshd
    write_env
    render_site
    log "up: done. Now: source $ROOT/env.sh"
}

cmd_down() {
    need_root
    check_root_path
    prepare_root
    log "down: stopping the dev cluster (MariaDB and PostgreSQL keep running)"
    stop_pidfile slurmd "$SLURMD_PID" /usr/sbin/slurmd
    stop_pidfile slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld
    stop_pidfile slurmdbd "$SLURMDBD_PID" /usr/sbin/slurmdbd
    stop_pidfile munged "$MUNGE_PID" /usr/sbin/munged
    stop_pidfile sshd "$SSHD_PID" /usr/sbin/sshd
    log "down: done"
}

cmd_status() {
    local bad=0 pid state
    show() { printf '%-12s %-5s %s\n' "$1" "$2" "$3"; }
    comp_pid() {
        if pid=$(pid_alive "$2" "$3"); then show "$1" up "pid $pid"; else show "$1" DOWN "no live pid in $2"; bad=1; fi
    }
    if mariadb_ok >/dev/null 2>&1; then show mariadb up 127.0.0.1:3306; else show mariadb DOWN 127.0.0.1:3306; bad=1; fi
    if pg_ok; then show postgresql up 127.0.0.1:5432; else show postgresql DOWN 127.0.0.1:5432; bad=1; fi
    comp_pid munged "$MUNGE_PID" /usr/sbin/munged
    comp_pid slurmdbd "$SLURMDBD_PID" /usr/sbin/slurmdbd
    comp_pid slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld
    comp_pid slurmd "$SLURMD_PID" /usr/sbin/slurmd
    state=$(node_state || true)
    if node_usable; then show node up "$NODE is $state"; else show node DOWN "$NODE is ${state:-unknown}"; bad=1; fi
    comp_pid sshd "$SSHD_PID" /usr/sbin/sshd
    if [[ -x $WRAPPER ]] && "$WRAPPER" --version >/dev/null 2>&1; then
        show apptainer up "$("$WRAPPER" --version) via $WRAPPER"
    else
        show apptainer DOWN "$WRAPPER missing or broken"; bad=1
    fi
    if [[ -s $SMOKE_SIF ]]; then show smoke-sif up "$SMOKE_SIF"; else show smoke-sif DOWN "$SMOKE_SIF missing"; bad=1; fi
    if [[ -s $ROOT/env.sh ]]; then show env.sh up "$ROOT/env.sh"; else show env.sh DOWN "$ROOT/env.sh missing"; bad=1; fi
    return "$bad"
}

main() {
    case ${1:-} in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        *) printf 'usage: %s up|down|status\n' "$0" >&2; exit 2 ;;
    esac
}

main "$@"
