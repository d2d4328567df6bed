"""Rows for dashboard and chart tests: requests waiting for signatures, incidents, backups.

Proposals and incidents go through the actions layer; patch attempts, restores and
backup runs are written as rows directly (their own flows need agents, storage and
workers, which these read-only pages do not exercise). Nothing here contacts a host.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from backups.choices import (
    ArtifactFormat,
    DrillStatus,
    RestoreMode,
    RestoreStatus,
    RunStatus,
    SourceKind,
)
from backups.choices import Verification as BackupVerification
from backups.models import BackupArtifact, BackupDrill, BackupRun, BackupSource, RestoreRequest
from incidents import actions as incidents
from incidents.choices import AttemptStatus, DecisionAction, DecisionSource, Severity
from incidents.models import AutoPatchAttempt, Decision, Incident
from pra.models import Host, PRAAction
from tests.factories import offline_host, propose

LONG_NAME = "a-" + "very-long-name-" * 6 + "end"


def hosts(n: int, prefix: str = "dns") -> list[Host]:
    return [offline_host(f"{prefix}-{i}") for i in range(n)]


def proposals(operator, host: Host, n: int, *, high: bool = False) -> list:
    """``n`` MEDIUM container restarts on ``host`` (distinct parameters), or one HIGH reboot."""
    if high:
        return [propose(operator, host, "reboot_system")]
    return [propose(operator, host, "restart_container", {"name": f"app-{i}"}) for i in range(n)]


def patch_attempt(agent, *, severity: int = Severity.CRITICAL, status=AttemptStatus.PENDING):
    """A patch waiting for signatures (policy put it behind multi-signature)."""
    now = timezone.now()
    incident, _ = incidents.open_or_update_incident(
        agent, cause=f"patch-{agent.name}", rule_id=None, severity=severity,
        title=f"{agent.name} keeps failing", telemetry={}, detected_at=now,
    )  # fmt: skip
    decision = Decision.objects.create(
        incident=incident, source=DecisionSource.HEURISTIC, action=DecisionAction.PATCH,
        patch_version="1.4.3",
    )  # fmt: skip
    return AutoPatchAttempt.objects.create(
        incident=incident, agent=agent, decision=decision, from_version="1.4.2",
        target_version="1.4.3", severity=severity, status=status, needs_approval=True,
        created=now, status_changed_at=now,
    )  # fmt: skip


def backup_source(name: str, *, runs: int = 1, failed: bool = False, age_hours: float = 1.0):
    source = BackupSource(name=name, kind=SourceKind.REDIS, dsn="redis://192.0.2.1:6379")
    source.full_clean()
    source.save()
    made = []
    for i in range(runs):
        at = timezone.now() - timedelta(hours=age_hours + i)
        made.append(
            BackupRun.objects.create(
                source=source,
                trigger="manual",
                status=RunStatus.SUCCEEDED,
                created=at,
                status_changed_at=at,
                started_at=at,
                finished_at=at + timedelta(seconds=3),
                bytes_raw=30_000 + i,
                bytes_stored=28_160 + i,
                duration_s=2.5 + i,
                verification=BackupVerification.VERIFIED,
                progress_bytes=30_000 + i,
            )  # fmt: skip
        )
    if failed:
        at = timezone.now()
        BackupRun.objects.create(
            source=source, trigger="manual", status=RunStatus.FAILED, created=at,
            status_changed_at=at, error="redis-cli: connection refused",
            failure_cause="unreachable",
        )  # fmt: skip
    return source, made


def restore_request(run: BackupRun, requester, *, overwrite: bool) -> RestoreRequest:
    artifact = BackupArtifact.objects.create(
        run=run, component="redis", key=f"{run.source.name}/run{run.pk}/dump.rdb.zst",
        format=ArtifactFormat.RDB, bytes_raw=run.bytes_raw, bytes_stored=run.bytes_stored,
        sha256="0" * 64, verification=BackupVerification.VERIFIED,
    )  # fmt: skip
    now = timezone.now()
    name = run.source.name if overwrite else f"{run.source.name}-scratch"
    return RestoreRequest.objects.create(
        artifact=artifact, mode=RestoreMode.OVERWRITE if overwrite else RestoreMode.SCRATCH,
        target={"kind": "redis", "name": name}, target_name=name, requested_by=requester,
        requester_label=requester.get_username(), status=RestoreStatus.PLANNED,
        status_changed_at=now, created=now,
    )  # fmt: skip


def build(n: int, *, operator, tag: str = "w") -> dict:
    """About ``n`` of every kind of row the dashboard lists."""
    made: dict = {"actions": [], "patches": [], "restores": [], "incidents": []}
    host_list = hosts(max(1, n // 2), prefix=f"{tag}-host")
    for host in host_list:
        made["actions"] += proposals(operator, host, 2)
        made["actions"] += proposals(operator, host, 1, high=True)
    for i in range(n):
        agent, _ = incidents.create_agent(
            name=f"{tag}-agent-{i}", kind="plugin", environment="production",
            available_version="1.4.3",
        )  # fmt: skip
        incident, _ = incidents.open_or_update_incident(
            agent, cause="errors", rule_id=None, severity=(i % 4) + 1,
            title=f"errors on {agent.name} {LONG_NAME}", telemetry={},
            detected_at=timezone.now() - timedelta(seconds=30),
        )  # fmt: skip
        made["incidents"].append(incident)
        made["patches"].append(patch_attempt(agent))
        _, runs = backup_source(f"{tag}-cache-{i}", runs=2, failed=i % 2 == 1)
        made["restores"].append(restore_request(runs[0], operator, overwrite=i % 2 == 0))
    return made


def history(operator, *, days: int, tag: str) -> None:
    """Incidents, patches, approvals and backups spread over the last ``days`` days."""
    now = timezone.now()
    for day in range(days):
        agent, _ = incidents.create_agent(name=f"{tag}-agent-{day}", kind="service")
        incident, _ = incidents.open_or_update_incident(
            agent, cause="errors", rule_id=None, severity=day % 4 + 1, title="errors",
            telemetry={}, detected_at=now,
        )  # fmt: skip
        opened = now - timedelta(days=day, hours=1)
        Incident.objects.filter(pk=incident.pk).update(
            detected_at=opened - timedelta(seconds=40 + day * 10), opened_at=opened,
            resolved_at=opened + timedelta(minutes=3 + day), status="RESOLVED",
        )  # fmt: skip
        attempt = patch_attempt(agent)
        AutoPatchAttempt.objects.filter(pk=attempt.pk).update(
            status=AttemptStatus.ROLLED_BACK if day % 3 == 0 else AttemptStatus.SUCCEEDED,
            finished_at=opened + timedelta(minutes=2),
        )
    for action in proposals(operator, offline_host(f"{tag}-host"), days):
        PRAAction.objects.filter(pk=action.pk).update(
            status="APPROVED", approved_at=action.created + timedelta(seconds=95)
        )
    source, runs = backup_source(f"{tag}-cache", runs=days * 2)
    drills(source, runs[0], days=days, target=200.0)


def drills(source: BackupSource, run: BackupRun, *, days: int, target: float = 300.0) -> list:
    """One restore drill a day, restore times growing 20 s a day (over ``target`` once they
    pass it), a failed drill every fifth day."""
    made = []
    for day in range(days):
        at = timezone.now() - timedelta(days=day, hours=2)
        failed = day % 5 == 4
        seconds = None if failed else 30.0 + 20 * day
        made.append(
            BackupDrill.objects.create(
                source=source,
                run=run,
                trigger="schedule",
                status=DrillStatus.FAILED if failed else DrillStatus.SUCCEEDED,
                status_changed_at=at,
                created=at,
                started_at=at,
                finished_at=at + timedelta(seconds=seconds or 5),
                rto_seconds=seconds,
                rto_target_seconds=target,
                met_target=None if failed or seconds is None else seconds <= target,
                error="restore: redis-cli: connection refused" if failed else "",
            )  # fmt: skip
        )
    return made
