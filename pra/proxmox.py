"""Proxmox VE nodes: VM/LXC backups (vzdump) and their restores (issue 14 §3).

A Proxmox node is an ordinary remediation host tagged ``proxmox``. Listing its backups is
a read-only diagnostic (``pve_backups``: ``pvesh get /nodes/NODE/storage/STORAGE/content
--content backup --output-format json`` through pra-diag); a restore is a HIGH catalog
action through the usual propose → two approvals → execute → verify path. The names a
restore takes (VMIDs, storage ids, archive file names) are validated here, by the catalog
on the portal, and again by the rendered wrapper on the node.

This module also gives the disaster-recovery report its VM/LXC rows: per node, the newest
archive its last backup listing saw, and the last restore action with its measured time
against the seed's 5-minute target.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pra.models import Host

# PVE's own rules, narrowed: VMIDs 100..999999999; storage ids start with a letter; vzdump
# names its archives vzdump-{qemu,lxc}-VMID-YYYY_MM_DD-HH_MM_SS.{vma,tar}[.zst|.gz|.lzo].
# (Backslash-free: the same patterns are copied into the wrappers' bash [[ =~ ]].)
VMID_PATTERN = r"^[1-9][0-9]{2,8}$"
STORAGE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
ARCHIVE_PATTERN = (
    r"^vzdump-(qemu|lxc)-[1-9][0-9]{2,8}-[0-9]{4}_[0-9]{2}_[0-9]{2}-[0-9]{2}_[0-9]{2}_[0-9]{2}"
    r"[.](vma|tar)([.](zst|gz|lzo))?$"
)
# A compressed archive restores to more than its size: free space must be this many times it.
SPACE_FACTOR = 2
# Seconds the post-restore check waits for the guest to run, answer ping and SSH.
WAIT_SECONDS = 90
TAG = "proxmox"
BACKUPS_DIAGNOSTIC = "pve_backups"
BACKUPS_VERB = "pve-backups"
RESTORE_ACTIONS = ("pve_restore", "pve_restore_as")


def render_values(prefix: str) -> dict[str, str]:
    """What the wrapper templates need of this module (``pra.target.render_target``)."""
    return {
        "PRA_PVE": shlex.quote(f"{prefix}/pra-pve"),
        "PVE_VMID": shlex.quote(VMID_PATTERN),
        "PVE_STORAGE": shlex.quote(STORAGE_PATTERN),
        "PVE_ARCHIVE": shlex.quote(ARCHIVE_PATTERN),
        "PVE_SPACE_FACTOR": str(SPACE_FACTOR),
        "PVE_WAIT": str(WAIT_SECONDS),
    }


def check_restore(params: dict[str, str]) -> None:
    """What a per-parameter pattern cannot say: the archive is a backup of ``vmid``."""
    if archive_vmid(params["archive"]) != params["vmid"]:
        raise ValueError(
            f"archive {params['archive']} is a backup of guest {archive_vmid(params['archive'])}, "
            f"not of {params['vmid']}"
        )


def archive_kind(archive: str) -> str:
    """``qemu`` (a VM: qmrestore) or ``lxc`` (a container: pct restore), from the name."""
    found = re.fullmatch(ARCHIVE_PATTERN.strip("^$"), archive)
    if not found:
        raise ValueError(f"{archive!r} is not a vzdump archive name")
    return found.group(1)


def archive_vmid(archive: str) -> str:
    archive_kind(archive)
    return archive.split("-")[2]


def archive_time(archive: str) -> datetime:
    stamp = "-".join(archive.split("-")[3:5]).split(".")[0]
    return datetime.strptime(stamp, "%Y_%m_%d-%H_%M_%S").replace(tzinfo=UTC)


def newest_backup(output: str) -> tuple[datetime | None, int]:
    """From a ``pve_backups`` listing (pvesh's JSON array): the newest archive's time and
    how many archives there are. ``ctime`` is PVE's; the name's stamp is the fallback."""
    try:
        items = json.loads(output or "[]")
    except ValueError:
        return None, 0
    times = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("ctime"), int):
            times.append(datetime.fromtimestamp(item["ctime"], tz=UTC))
        elif isinstance(item.get("volid"), str):
            try:
                times.append(archive_time(item["volid"].rsplit("/", 1)[-1]))
            except ValueError:
                continue
    return (max(times) if times else None), len(times)


def nodes() -> list[Host]:
    from pra.models import Host

    return [h for h in Host.objects.filter(enabled=True).order_by("name") if TAG in h.tag_list]


def dr_rows(now: datetime) -> list:
    """One ``backups.dr.Row`` per enabled Proxmox node."""
    from django.conf import settings

    from backups.dr import Row, judge_proof
    from pra.choices import ActionStatus
    from pra.models import DiagnosticRun, PRAAction

    fresh_after = now - timedelta(hours=settings.BACKUP_FRESH_HOURS)
    proof_after = now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS)
    target = float(settings.BACKUP_RTO_TARGETS.get("proxmox", 300))
    rows = []
    for host in nodes():
        row = Row(name=host.name, target_seconds=target)
        listing = (
            DiagnosticRun.objects.filter(
                host=host, command__startswith=BACKUPS_VERB + " ", exit_code=0
            )
            .order_by("-created")
            .first()
        )
        newest, count = newest_backup(listing.output) if listing else (None, 0)
        if newest is None or listing is None:
            row.problems.append(
                "no vzdump backup seen (run the pve_backups diagnostic)"
                if listing is None
                else "its last backup listing holds no archive"
            )
        else:
            row.last_backup = newest
            row.backup_fresh = newest >= fresh_after
            row.notes.append(f"{count} archive(s) listed {listing.created:%Y-%m-%d %H:%M}")
            if not row.backup_fresh:
                row.problems.append(f"newest vzdump older than {settings.BACKUP_FRESH_HOURS} h")
        restore = (
            PRAAction.objects.filter(
                host=host, action__in=RESTORE_ACTIONS, status=ActionStatus.COMPLETED
            )
            .exclude(started_at=None)
            .exclude(finished_at=None)
            .order_by("-finished_at")
            .first()
        )
        proof = None
        if restore is not None and restore.finished_at and restore.started_at:
            seconds = (restore.finished_at - restore.started_at).total_seconds()
            proof = (restore.finished_at, f"action #{restore.pk}", round(seconds, 3))
        judge_proof(row, proof, proof_after)
        rows.append(row)
    return rows
