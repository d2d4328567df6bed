"""The disaster-recovery report (issue 14 §4): can every component be brought back, in time?

For each component of the site (PostgreSQL, Redis, Kubernetes, Terraform state, VMs/LXCs)
it gives, per source (per Proxmox node for VMs/LXCs):

- the **last good backup** (``BackupRun.objects.usable()``: the one definition) and whether
  it is fresh (``BACKUP_FRESH_HOURS``);
- the **last restore proof**: the newest restore drill, or real restore, that succeeded, with
  its **measured restore time** against the target (the seed's: a Terraform state in 2 min,
  a VM/LXC in 5 min; PostgreSQL/Redis: ``BACKUP_RTO_TARGETS``). A proof counts when it
  succeeded within its target and is younger than ``BACKUP_DRILL_FRESH_DAYS``;
- the last backup's full verification time against ``BACKUP_VERIFY_TARGET`` (5 min): a
  slower one is a problem too.

The seed's MinIO and monitoring rebuilds, which the portal does not run, are components
too: a person rehearses one, times it and records it (``record_exercise``, one audit
event); the newest record is judged like a restore proof.

A component is OK when it has at least one enabled source and each of them has a fresh
backup and a fresh restore proof (a rebuild: a fresh record within its target).
``manage.py dr_report`` exits non-zero otherwise; the admin page (Backups › Backup
sources › DR report) shows the same ``build()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from backups.choices import DrillStatus, RestoreStatus, SourceKind
from backups.models import BackupDrill, BackupRun, BackupSource, RestoreRequest, fresh_since
from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.errors import RequestRefused
from portal.lib.text import UnstorableText, refuse_unstorable
from portal.models import AuditEvent

# The seed's rebuilds the portal does not run: a person rehearses them (the runbook's
# step), times them and records the time (``record_exercise``, ``dr_report --record``).
EXERCISES = {
    "minio_rebuild": ("MinIO rebuild", 600.0, "docs/disaster-recovery.md step 2"),
    "monitoring_rebuild": ("Monitoring rebuild", 900.0, "docs/disaster-recovery.md step 6"),
}
COMPONENTS = (
    (SourceKind.POSTGRES, "PostgreSQL"),
    (SourceKind.REDIS, "Redis"),
    (SourceKind.KUBERNETES, "Kubernetes"),
    (SourceKind.TERRAFORM, "Terraform state"),
    ("proxmox", "VMs/LXCs (Proxmox)"),
    *((key, label) for key, (label, _target, _where) in EXERCISES.items()),
)
COMPONENT_KEYS = tuple(key for key, _ in COMPONENTS)
MAX_EXERCISE_SECONDS = 7 * 24 * 3600.0


@dataclass
class Row:
    """One source (or Proxmox node) of a component."""

    name: str
    last_backup: datetime | None = None
    backup_run: int | None = None
    backup_fresh: bool = False
    verify_seconds: float | None = None
    restore_at: datetime | None = None
    restore_what: str = ""  # "drill #3", "restore #5", "action #7"
    restore_seconds: float | None = None
    target_seconds: float = 0.0
    restore_ok: bool = False
    has_backups: bool = True  # False for a rebuild rehearsed by hand (nothing backed up)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ComponentReport:
    key: str
    label: str
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.problems and all(not r.problems for r in self.rows)


@dataclass
class Report:
    generated: datetime
    components: list[ComponentReport]
    fresh_hours: int
    drill_days: int
    verify_target: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.components)

    @property
    def failing(self) -> list[str]:
        return [c.label for c in self.components if not c.ok]

    def as_dict(self) -> dict:
        def clean(value):
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        return clean({
            "generated": self.generated, "ok": self.ok, "fresh_hours": self.fresh_hours,
            "drill_days": self.drill_days, "verify_target": self.verify_target,
            "components": [
                {"key": c.key, "label": c.label, "ok": c.ok, "problems": c.problems,
                 "rows": [asdict(r) for r in c.rows]}
                for c in self.components
            ],
        })  # fmt: skip


def _restore_proof(source: BackupSource, target: float):
    """The newest successful drill or restore of the source's backups: (when, what, seconds)."""
    found: list[tuple[datetime, str, float | None]] = []
    drill = (
        BackupDrill.objects.filter(source=source, status=DrillStatus.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )
    if drill is not None and drill.finished_at is not None:
        found.append((drill.finished_at, f"drill #{drill.pk}", drill.rto_seconds))
    restore = (
        RestoreRequest.objects.filter(artifact__run__source=source, status=RestoreStatus.SUCCEEDED)
        .order_by("-finished_at")
        .first()
    )
    if restore is not None and restore.finished_at is not None:
        found.append(
            (restore.finished_at, f"restore #{restore.pk}", restore.report.get("restore_seconds"))
        )
    return max(found, key=lambda item: item[0]) if found else None


def source_row(source: BackupSource, now: datetime) -> Row:
    row = Row(name=source.name, target_seconds=source.rto_target)
    proof_after = now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS)
    last = BackupRun.objects.of_source(source).last_good()
    if last is None:
        row.problems.append("no good backup")
    else:
        row.last_backup, row.backup_run = last.created, last.pk
        row.verify_seconds = last.verify_seconds
        row.backup_fresh = last.created >= fresh_since(now)
        if not row.backup_fresh:
            row.problems.append(f"last good backup older than {settings.BACKUP_FRESH_HOURS} h")
        # The seed's "verification under 5 min": a backup nobody can check in time is
        # not one to count on during a recovery.
        if last.verify_seconds is None:
            row.notes.append("verification time not measured (a backup from before it was)")
        elif last.verify_seconds > settings.BACKUP_VERIFY_TARGET:
            row.problems.append(
                f"verification took {last.verify_seconds:.0f} s, over the "
                f"{settings.BACKUP_VERIFY_TARGET} s target"
            )
    judge_proof(row, _restore_proof(source, row.target_seconds), proof_after)
    return row


def judge_proof(row: Row, proof, proof_after: datetime) -> None:
    """Fill the row's restore columns from (when, what, seconds); a problem unless it is a
    fresh success within the target."""
    if proof is None:
        row.problems.append("never restored (no successful drill or restore)")
        return
    row.restore_at, row.restore_what, row.restore_seconds = proof
    within = row.restore_seconds is not None and row.restore_seconds <= row.target_seconds
    row.restore_ok = within and row.restore_at >= proof_after
    if row.restore_seconds is None:
        row.problems.append(f"{row.restore_what} has no measured restore time")
    elif not within:
        row.problems.append(
            f"{row.restore_what} took {row.restore_seconds:.1f} s, over the "
            f"{row.target_seconds:g} s target"
        )
    if row.restore_at < proof_after:
        row.problems.append(
            f"last successful restore older than {settings.BACKUP_DRILL_FRESH_DAYS} days"
        )


def record_exercise(
    step: str,
    *,
    seconds: float,
    by: Actor | User | str,
    performed_at: datetime | None = None,
    note: str = "",
    now: datetime | None = None,
) -> AuditEvent:
    """Record a rehearsed rebuild the portal does not run (MinIO, monitoring): when it was
    done and how long it took, as one audit event (append-only, chained: the record is
    what the report reads). Refuses, writing nothing, anything it cannot trust."""
    now = now or timezone.now()
    performed_at = performed_at or now
    if step not in EXERCISES:
        raise RequestRefused(
            "invalid", f"unknown exercise {step!r}; choose from {', '.join(EXERCISES)}"
        )
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise RequestRefused("invalid", "the time taken must be a number of seconds")
    seconds = round(float(seconds), 1)  # what is stored, judged and said: one value
    if not 0.1 <= seconds <= MAX_EXERCISE_SECONDS:
        raise RequestRefused("invalid", "the time taken must be at least 0.1 s and at most 7 days")
    if timezone.is_naive(performed_at):
        raise RequestRefused(
            "invalid", "the exercise time needs a time zone (e.g. 2026-12-01T02:00Z)"
        )
    if performed_at > now + timedelta(minutes=5):
        raise RequestRefused("invalid", "the exercise cannot be in the future")
    if performed_at < now - timedelta(days=366):
        raise RequestRefused("invalid", "the exercise is more than a year old")
    note = " ".join((note or "").split())
    if len(note) > 500:
        raise RequestRefused("invalid", "the note is longer than 500 characters")
    try:
        refuse_unstorable({"note": note, "step": step})
    except UnstorableText as exc:
        raise RequestRefused("invalid", str(exc)) from None
    label, target, _where = EXERCISES[step]
    with transaction.atomic():
        return record(
            AuditEventType.DR_EXERCISE_RECORDED,
            actor=by,
            details={"step": step, "seconds": seconds, "target_seconds": target,
                     "performed_at": performed_at.astimezone(UTC).isoformat(), "note": note},
        )  # fmt: skip


def exercise_row(step: str, now: datetime) -> Row:
    """The newest recorded exercise of ``step`` against its target and freshness."""
    label, target, where = EXERCISES[step]
    row = Row(name=f"rehearsed by hand ({where})", target_seconds=target, has_backups=False)
    recorded = AuditEvent.objects.filter(
        event_type=AuditEventType.DR_EXERCISE_RECORDED, details__step=step
    ).order_by("-id")[:50]
    newest = max(recorded, key=lambda e: e.details["performed_at"], default=None)
    if newest is None:
        row.problems.append(
            f"never rehearsed: time the step, then dr_report --record {step} --took SECONDS"
        )
        return row
    at = datetime.fromisoformat(newest.details["performed_at"])
    proof = (at, f"exercise by {newest.actor}", float(newest.details["seconds"]))
    judge_proof(row, proof, now - timedelta(days=settings.BACKUP_DRILL_FRESH_DAYS))
    if newest.details.get("note"):
        row.notes.append(newest.details["note"])
    return row


def build(now: datetime | None = None, components: tuple[str, ...] = COMPONENT_KEYS) -> Report:
    now = now or timezone.now()
    reports = []
    for key, label in COMPONENTS:
        if key not in components:
            continue
        component = ComponentReport(key, label)
        if key in EXERCISES:
            component.rows = [exercise_row(key, now)]
        elif key == "proxmox":
            from pra import proxmox

            component.rows = proxmox.dr_rows(now)
            if not component.rows:
                component.problems.append("no Proxmox node registered (a host tagged proxmox)")
        else:
            sources = BackupSource.objects.filter(kind=key, enabled=True).order_by("name")
            component.rows = [source_row(source, now) for source in sources]
            if not component.rows:
                component.problems.append("no enabled backup source")
        reports.append(component)
    return Report(
        generated=now,
        components=reports,
        fresh_hours=settings.BACKUP_FRESH_HOURS,
        drill_days=settings.BACKUP_DRILL_FRESH_DAYS,
        verify_target=settings.BACKUP_VERIFY_TARGET,
    )
