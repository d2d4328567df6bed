"""The backups' charts (``portal.charts`` draws them): backup size and duration per source,
restore drills against their RTO targets; and the restores' approval waits for the
portal's "time to approval" chart. Registered by ``BackupsConfig.ready()``."""

from __future__ import annotations

from datetime import date, datetime

from django.utils import timezone

from backups.choices import DrillStatus, RunStatus
from backups.models import BackupDrill, BackupRun, RestoreRequest
from portal.charts import (
    DURATION_STEPS,
    MAX_POINTS,
    PALETTE,
    Chart,
    Series,
    Wait,
    approval_waits,
    chart,
    lines,
    short,
    since,
)
from portal.templatetags.portal_format import human_bytes, human_duration


@approval_waits
def restore_waits(start: datetime) -> list[Wait]:
    """Restores fully signed since ``start``: an overwrite is HIGH impact, a scratch
    restore MEDIUM."""
    restores = (
        RestoreRequest.objects.filter(approved_at__gte=start)
        .order_by("-approved_at")
        .values_list("pk", "mode", "created", "approved_at")[:MAX_POINTS]
    )
    return [
        Wait(f"restore #{pk}", "HIGH" if mode == "overwrite" else "MEDIUM", created, at)
        for pk, mode, created, at in restores
        if at is not None  # filtered on approved_at above: never None here
    ]


@chart(order=50)
def backup_runs(days: list[date]) -> list[Chart]:
    found = list(
        BackupRun.objects.filter(
            created__gte=since(days), status=RunStatus.SUCCEEDED, restore__isnull=True
        )
        .order_by("-created")
        .values_list("pk", "source__name", "created", "bytes_stored", "duration_s")[:MAX_POINTS]
    )
    found.reverse()
    names = sorted({name for _, name, *_ in found})
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    size = {name: Series(name, colours[name]) for name in names}
    took = {name: Series(name, colours[name]) for name in names}
    rows = []
    for pk, name, created, stored, seconds in found:
        when = timezone.localtime(created)
        size[name].points.append(
            (
                created.timestamp(),
                float(stored),
                f"{name} run #{pk} {when:%b %d %H:%M}: {human_bytes(stored)}",
            )
        )
        if seconds is not None:
            took[name].points.append(
                (
                    created.timestamp(),
                    seconds,
                    f"{name} run #{pk} {when:%b %d %H:%M}: {human_duration(seconds)}",
                )
            )
        rows.append(
            [f"{when:%Y-%m-%d %H:%M}", name, f"#{pk}", human_bytes(stored), human_duration(seconds)]
        )
    legend = [(name, colours[name]) for name in names]
    size_title, took_title = "Backup size per source (stored)", "Backup duration per source"
    header = ["run", "source", "id", "stored", "took"]
    return [
        Chart("backup-size", size_title, "Is anything growing or shrinking unexpectedly?",
              lines(days, list(size.values()), size_title, fmt=human_bytes,
                    steps=[2**k for k in range(10, 50)]),
              legend, header, rows[-200:]),
        Chart("backup-duration", took_title, "Are backups getting slower?",
              lines(days, list(took.values()), took_title, fmt=short,
                    steps=DURATION_STEPS),
              legend, header, rows[-200:]),
    ]  # fmt: skip


@chart(order=60)
def drill_restore_times(days: list[date]) -> list[Chart]:
    """Each restore drill's measured restore time, per source, against the RTO targets (one
    dashed line per distinct target); failed drills are listed under the chart."""
    found = list(
        BackupDrill.objects.filter(
            created__gte=since(days), status__in=[DrillStatus.SUCCEEDED, DrillStatus.FAILED]
        )
        .order_by("-created")
        .values_list(
            "pk", "source__name", "created", "status", "rto_seconds", "rto_target_seconds",
            "met_target",
        )[:MAX_POINTS]
    )  # fmt: skip
    found.reverse()
    names = sorted({name for _, name, *_ in found})
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    series = {name: Series(name, colours[name]) for name in names}
    targets: dict[float, set[str]] = {}
    rows = []
    for pk, name, created, status, seconds, target, met in found:
        when = timezone.localtime(created)
        if target:
            targets.setdefault(float(target), set()).add(name)
        verdict = (
            "FAILED" if status == DrillStatus.FAILED
            else "over target" if met is False
            else "within target"
        )  # fmt: skip
        if seconds is not None:
            series[name].points.append(
                (
                    created.timestamp(),
                    seconds,
                    f"{name} drill #{pk} {when:%b %d %H:%M}: restore {human_duration(seconds)}"
                    f" (target {human_duration(target)}, {verdict})",
                )
            )
        rows.append(
            [f"{when:%Y-%m-%d %H:%M}", name, f"#{pk}", human_duration(seconds),
             human_duration(target), verdict]
        )  # fmt: skip
    lines_at = [
        (value, f"target {short(value)} ({', '.join(sorted(who))})")
        for value, who in sorted(targets.items())
    ]
    title = "Restore drills: restore time per source against its RTO target"
    failed = sum(1 for row in rows if row[-1] == "FAILED")
    note = (
        f"{failed} failed drill(s) in the window (no restore time to draw; listed below)."
        if failed
        else ""
    )
    return [
        Chart("drill-restore-times", title, "Could we restore in time if we had to?",
              lines(days, list(series.values()), title, fmt=short, targets=lines_at,
                    steps=DURATION_STEPS),
              [(name, colours[name]) for name in names] + [("RTO target", "#b3261e")],
              ["drill", "source", "id", "restore took", "target", "result"],
              rows[-200:], note=note),
    ]  # fmt: skip
