"""Proxmox VE stand-ins for a loopback target (``pra.devtarget.LocalTarget``).

Proxmox cannot run here (no cluster, no KVM guests), so a loopback target gets recording
stand-ins for ``pvesh``, ``qmrestore``, ``pct``, ``qm``, ``vzdump`` and ``ping``, written
into its ``standins/`` directory (first on the wrappers' PATH), as ``pra.devtarget`` does
for systemctl. They log every call in ``state/calls.log`` (``target.calls()``), honour the
target's ``fail_command``/delay files, and answer in the JSON shapes of PVE 8's API
(``pvesh get ... --output-format json``): a storage's backup content, a storage's status,
``/cluster/resources --type vm``. The sshd, ``pra-exec``, ``pra-run``, ``pra-diag`` and the
rendered ``pra-pve`` that call them are the real ones.

State under ``state/pve/``: ``storage/<id>`` ("AVAIL TOTAL" bytes), ``backups/<storage>/
<archive>`` (an archive; its content is the guest configuration it restores, its mtime the
backup time), ``guests/<vmid>`` ("TYPE STATUS") and ``guests/<vmid>.conf``. ``ping``
answers for an address that a *running* guest's configuration holds.

Imports nothing from Django.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime
from pathlib import Path

from pra.devtarget import _STANDIN_HEAD, LocalTarget

PROGRAMS = ("pvesh", "qmrestore", "pct", "qm", "vzdump", "ping")

_COMMON = r"""
readonly PVE=$STATE/pve

guest_file() {  # VMID -> its state file; refuses a VMID that is not one
    [[ $1 =~ ^[1-9][0-9]{2,8}$ ]] || { printf '%s: invalid vmid %s\n' "$PROG" "$1" >&2; exit 2; }
    printf '%s/guests/%s' "$PVE" "$1"
}

archive_file() {  # VOLID (storage:backup/name) -> the archive's file
    local storage=${1%%:*} name=${1#*:backup/}
    [[ $1 == *:backup/* && $storage =~ ^[a-z][a-z0-9_-]*$ && $name =~ ^vzdump-[a-z0-9_.-]+$ ]] ||
        { printf '%s: bad volume id %s\n' "$PROG" "$1" >&2; exit 2; }
    printf '%s/backups/%s/%s' "$PVE" "$storage" "$name"
}

restore_into() {  # TYPE VMID VOLID FORCE UNIQUE
    local file archive
    file=$(guest_file "$2")
    archive=$(archive_file "$3")
    [[ -f $archive ]] || { printf "%s: volume '%s' does not exist\n" "$PROG" "$3" >&2; exit 2; }
    if [[ -f $file && $4 != 1 ]]; then
        printf 'unable to restore %s %s - %s %s already exists\n' "$1" "$2" "$1" "$2" >&2
        exit 255
    fi
    if [[ $5 == 1 ]]; then
        sed 's/,hwaddr=[0-9A-Fa-f:]*//' "$archive" >"$file.conf"
    else
        cp "$archive" "$file.conf"
    fi
    printf '%s stopped\n' "$1" >"$file"
    printf 'restore %s %s from %s: done\n' "$1" "$2" "$3"
}

guest_cmd() {  # TYPE SUBCOMMAND VMID [ARGS...]: qm / pct start|stop|shutdown|status|config
    local type=$1 sub=$2 file kind status
    file=$(guest_file "$3")
    if [[ ! -f $file ]]; then
        printf "Configuration file 'nodes/%s/%s/%s.conf' does not exist\n" \
            "$(hostname)" "$type" "$3" >&2
        exit 2
    fi
    read -r kind status <"$file"
    [[ $kind == "$type" ]] || { printf '%s: %s is a %s\n' "$PROG" "$3" "$kind" >&2; exit 2; }
    case $sub in
        start) printf '%s running\n' "$kind" >"$file" ;;
        stop | shutdown) printf '%s stopped\n' "$kind" >"$file" ;;
        status) printf 'status: %s\n' "$status" ;;
        config) cat "$file.conf" ;;
        *) printf '%s: unknown command %s\n' "$PROG" "$sub" >&2; exit 2 ;;
    esac
}
"""

_BODIES = {
    "pvesh": r"""
[[ ${1-} == get ]] || { printf 'pvesh (stand-in): only get\n' >&2; exit 2; }
path=${2-}
node=$(hostname)
node=${node%%.*}
if [[ $path =~ ^/nodes/([^/]+)/storage/([a-z][a-z0-9_-]*)/(content|status)$ ]]; then
    [[ ${BASH_REMATCH[1]} == "$node" ]] || { printf 'hostname lookup failed\n' >&2; exit 2; }
    storage=${BASH_REMATCH[2]}
    [[ -f $PVE/storage/$storage ]] ||
        { printf "storage '%s' does not exist\n" "$storage" >&2; exit 2; }
    if [[ ${BASH_REMATCH[3]} == status ]]; then
        read -r avail total <"$PVE/storage/$storage"
        printf '{"active":1,"avail":%s,"content":"backup,images,rootdir","enabled":1,' "$avail"
        printf '"shared":0,"total":%s,"type":"dir","used":%s}\n' "$total" "$((total - avail))"
        exit 0
    fi
    sep=""
    printf '['
    for archive in "$PVE/backups/$storage"/vzdump-*; do
        [[ -f $archive ]] || continue
        name=${archive##*/}
        [[ $name =~ ^vzdump-(qemu|lxc)-([0-9]+)-[0-9_-]+\.(vma|tar)(\.(zst|gz|lzo))?$ ]] || continue
        printf '%s{"content":"backup","ctime":%s,"format":"%s","notes":"%s","size":%s,' \
            "$sep" "$(stat -c %Y "$archive")" "${BASH_REMATCH[3]}${BASH_REMATCH[4]}" \
            "guest ${BASH_REMATCH[2]}" "$(stat -c %s "$archive")"
        printf '"subtype":"%s","vmid":%s,"volid":"%s:backup/%s"}' \
            "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$storage" "$name"
        sep=","
    done
    printf ']\n'
    exit 0
fi
if [[ $path == /cluster/resources ]]; then
    sep=""
    printf '['
    for file in "$PVE/guests"/*; do
        [[ -f $file && $file != *.conf ]] || continue
        read -r kind status <"$file"
        vmid=${file##*/}
        printf '%s{"id":"%s/%s","maxdisk":8589934592,"name":"guest%s","node":"%s",' \
            "$sep" "$kind" "$vmid" "$vmid" "$node"
        printf '"status":"%s","template":0,"type":"%s","vmid":%s}' "$status" "$kind" "$vmid"
        sep=","
    done
    printf ']\n'
    exit 0
fi
printf "No 'get' handler for '%s'\n" "$path" >&2
exit 2
""",
    "qmrestore": r"""
volid=$1 vmid=$2 force=0 unique=0
shift 2
while (( $# )); do
    case $1 in
        --storage) shift ;;
        --force) force=$2; shift ;;
        --unique) unique=$2; shift ;;
    esac
    shift
done
[[ $volid == *vzdump-qemu-* ]] || { printf 'qmrestore: not a VM archive\n' >&2; exit 2; }
restore_into qemu "$vmid" "$volid" "$force" "$unique"
""",
    "pct": r"""
if [[ ${1-} == restore ]]; then
    vmid=$2 volid=$3 force=0 unique=0
    shift 3
    while (( $# )); do
        case $1 in
            --storage) shift ;;
            --force) force=$2; shift ;;
            --unique) unique=$2; shift ;;
        esac
        shift
    done
    [[ $volid == *vzdump-lxc-* ]] || { printf 'pct: not a container archive\n' >&2; exit 2; }
    restore_into lxc "$vmid" "$volid" "$force" "$unique"
    exit 0
fi
guest_cmd lxc "$@"
""",
    "qm": r"""
guest_cmd qemu "$@"
""",
    "vzdump": r"""
vmid=$1 storage=""
shift
while (( $# )); do
    case $1 in
        --storage) storage=$2; shift ;;
    esac
    shift
done
file=$(guest_file "$vmid")
[[ -f $file ]] || { printf 'vzdump: guest %s does not exist\n' "$vmid" >&2; exit 2; }
[[ -d $PVE/backups/$storage ]] || { printf "vzdump: no storage '%s'\n" "$storage" >&2; exit 2; }
read -r kind status <"$file"
ext=tar.zst
[[ $kind == lxc ]] || ext=vma.zst
TZ=UTC printf -v stamp '%(%Y_%m_%d-%H_%M_%S)T' -1
name=vzdump-$kind-$vmid-$stamp.$ext
cp "$file.conf" "$PVE/backups/$storage/$name"
printf "INFO: starting new backup job: vzdump %s --mode stop\n" "$vmid"
printf "INFO: creating vzdump archive '/var/lib/vz/dump/%s'\n" "$name"
printf 'INFO: Finished Backup of VM %s (%s)\n' "$vmid" "$status"
""",
    "ping": r"""
address=${*: -1}
for file in "$PVE/guests"/*; do
    [[ -f $file && $file != *.conf ]] || continue
    read -r _ status <"$file"
    if [[ $status == running ]] && grep -q "ip=$address/" "$file.conf"; then
        printf '64 bytes from %s: icmp_seq=1 ttl=64 time=0.05 ms\n' "$address"
        exit 0
    fi
done
printf 'From %s icmp_seq=1 Destination Host Unreachable\n' "$address"
exit 1
""",
}


def install(target: LocalTarget) -> None:
    """Write the PVE stand-ins into ``target`` (after its ``setup()``) and their state dirs."""
    pve = target.state_dir / "pve"
    for name in ("storage", "backups", "guests"):
        (pve / name).mkdir(parents=True, exist_ok=True)
    for program in PROGRAMS:
        head = _STANDIN_HEAD.replace("@@PROG@@", program).replace(
            "@@STATE@@", shlex.quote(str(target.state_dir))
        )
        # Before the first command: file-wide (each program uses some of the shared helpers).
        head = head.replace(
            "\nset -euo pipefail", "\n# shellcheck disable=SC2317\nset -euo pipefail", 1
        )
        text = head + _COMMON + _BODIES[program]
        path = target.standins_dir / program
        path.write_text(text)
        path.chmod(0o755)


def _pve(target: LocalTarget) -> Path:
    return target.state_dir / "pve"


def add_storage(target: LocalTarget, storage: str, *, avail: int, total: int) -> None:
    (_pve(target) / "storage" / storage).write_text(f"{avail} {total}\n")
    (_pve(target) / "backups" / storage).mkdir(exist_ok=True)


def add_backup(
    target: LocalTarget, storage: str, archive: str, config: str, when: datetime
) -> Path:
    """A vzdump archive on ``storage`` holding ``config`` (what restoring it gives)."""
    path = _pve(target) / "backups" / storage / archive
    path.write_text(config)
    stamp = when.replace(tzinfo=UTC).timestamp()
    os.utime(path, (stamp, stamp))
    return path


def add_guest(target: LocalTarget, vmid: int, kind: str, status: str, config: str) -> None:
    guests = _pve(target) / "guests"
    (guests / f"{vmid}.conf").write_text(config)
    (guests / str(vmid)).write_text(f"{kind} {status}\n")


def guest(target: LocalTarget, vmid: int) -> tuple[str, str, str] | None:
    """(type, status, config) of a guest, or None."""
    state = _pve(target) / "guests" / str(vmid)
    if not state.exists():
        return None
    kind, status = state.read_text().split()
    return kind, status, (state.parent / f"{vmid}.conf").read_text()


def backups(target: LocalTarget, storage: str) -> list[str]:
    return sorted(p.name for p in (_pve(target) / "backups" / storage).iterdir())


def fail(target: LocalTarget, program: str, exit_code: int = 1, message: str = "") -> None:
    """Make every later call of a PVE stand-in print ``message`` and exit ``exit_code``."""
    if program not in PROGRAMS:
        raise ValueError(f"{program!r} is not a PVE stand-in")
    (target.state_dir / "fail" / program).write_text(f"{int(exit_code)}\n{message}")
