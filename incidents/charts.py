"""The incidents' charts (``portal.charts`` draws them): incidents opened per day by
severity, mean time to detect and to resolve per day, auto-patch success and rollback rates.
Registered by ``IncidentsConfig.ready()``."""

from __future__ import annotations

from datetime import date

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import TruncDate

from incidents.choices import AttemptStatus, Severity
from incidents.models import AutoPatchAttempt, Incident
from portal.charts import (
    DURATION_STEPS,
    PALETTE,
    Chart,
    Series,
    as_date,
    chart,
    lines,
    midday,
    num,
    short,
    since,
    stacked_bars,
)
from portal.templatetags.portal_format import human_duration

# Seed targets (README, incidents.metrics).
MTTD_TARGET = 120.0
MTTR_TARGET = 600.0
SUCCESS_TARGET = 95.0
ROLLBACK_TARGET = 2.0

SEVERITY_COLOURS = {1: "#9aa5b1", 2: "#e0a100", 3: "#d9480f", 4: "#9b1c1c"}


@chart(order=10)
def incidents_per_day(days: list[date]) -> list[Chart]:
    index = {day: i for i, day in enumerate(days)}
    counts: dict[tuple[date, int], int] = {}
    for row in (
        Incident.objects.filter(opened_at__gte=since(days))
        .annotate(day=TruncDate("opened_at"))
        .values("day", "severity")
        .annotate(n=Count("id"))
        .order_by()
    ):
        counts[(as_date(row["day"]), row["severity"])] = row["n"]
    series = [
        Series(
            sev.label,
            SEVERITY_COLOURS[sev.value],
            [
                (index[day], counts.get((day, sev.value), 0), f"{day:%a %b %d}: {n} {sev.label}")
                for day in days
                for n in [counts.get((day, sev.value), 0)]
            ],
        )
        for sev in Severity
    ]
    rows = [
        [f"{day:%Y-%m-%d}", *(str(counts.get((day, s.value), 0)) for s in Severity)]
        for day in days
        if any(counts.get((day, s.value)) for s in Severity)
    ]
    title = "Incidents opened per day, by severity"
    return [
        Chart(
            "incidents-per-day",
            title,
            "Is it getting quieter?",
            stacked_bars(days, series, title),
            [(s.name, s.colour) for s in series],
            ["day", *(s.label for s in Severity)],
            rows,
        )
    ]


@chart(order=20)
def detect_and_resolve(days: list[date]) -> list[Chart]:
    detect = ExpressionWrapper(F("opened_at") - F("detected_at"), output_field=DurationField())
    resolve = ExpressionWrapper(F("resolved_at") - F("opened_at"), output_field=DurationField())
    found = list(
        Incident.objects.filter(opened_at__gte=since(days))
        .annotate(day=TruncDate("opened_at"))
        .values("day")
        .annotate(
            n=Count("id"),
            resolved=Count("id", filter=Q(resolved_at__isnull=False)),
            # Not "mttd"/"mttr": those names are Incident properties.
            mean_mttd=Avg(detect),
            mean_mttr=Avg(resolve, filter=Q(resolved_at__isnull=False)),
        )
        .order_by("day")
    )
    charts = []
    for key, column, name, target, count_key in (
        ("mttd", "mean_mttd", "MTTD", MTTD_TARGET, "n"),
        ("mttr", "mean_mttr", "MTTR", MTTR_TARGET, "resolved"),
    ):
        points = [
            (
                midday(as_date(row["day"])),
                row[column].total_seconds(),
                f"{as_date(row['day']):%a %b %d}: {name} {human_duration(row[column])} "
                f"over {row[count_key]} incident(s)",
            )
            for row in found
            if row[column] is not None
        ]
        label = f"{name} per day (mean) against its {short(target)} target"
        words = "detect (detected → opened)" if key == "mttd" else "resolve (opened → resolved)"
        charts.append(
            Chart(
                f"{key}-per-day",
                label,
                f"How long do incidents take to {words}?",
                lines(
                    days,
                    [Series(name, PALETTE[0], points)],
                    label,
                    fmt=short,
                    targets=[(target, f"target {short(target)}")],
                    steps=DURATION_STEPS,
                ),
                [(name, PALETTE[0]), (f"target {short(target)}", "#b3261e")],
                ["day", name, "incidents"],
                [
                    [f"{as_date(r['day']):%Y-%m-%d}", human_duration(r[column]), str(r[count_key])]
                    for r in found
                    if r[column] is not None
                ],
            )
        )
    return charts


@chart(order=30)
def autopatch_rates(days: list[date]) -> list[Chart]:
    finished = [AttemptStatus.SUCCEEDED, AttemptStatus.ROLLED_BACK, AttemptStatus.FAILED]
    found = list(
        AutoPatchAttempt.objects.filter(finished_at__gte=since(days), status__in=finished)
        .annotate(day=TruncDate("finished_at"))
        .values("day")
        .annotate(
            done=Count("id"),
            ok=Count("id", filter=Q(status=AttemptStatus.SUCCEEDED)),
            rolled=Count("id", filter=Q(status=AttemptStatus.ROLLED_BACK)),
        )
        .order_by("day")
    )
    success, rollback = Series("success", PALETTE[2]), Series("rolled back", PALETTE[1])
    rows = []
    for row in found:
        day, done = as_date(row["day"]), row["done"]
        ok, rolled = 100.0 * row["ok"] / done, 100.0 * row["rolled"] / done
        success.points.append((midday(day), ok, f"{day:%b %d}: {ok:.1f} % of {done} succeeded"))
        rollback.points.append(
            (midday(day), rolled, f"{day:%b %d}: {rolled:.1f} % of {done} rolled back")
        )
        rows.append([f"{day:%Y-%m-%d}", str(done), f"{ok:.1f} %", f"{rolled:.1f} %"])
    title = "Auto-patch success and rollback rates per day"
    return [
        Chart(
            "autopatch-rates",
            title,
            "Does self-healing work?",
            lines(
                days,
                [success, rollback],
                title,
                fmt=lambda v: f"{num(v)} %",
                top=100.0,
                targets=[
                    (SUCCESS_TARGET, "success target 95 %"),
                    (ROLLBACK_TARGET, "rollback target 2 %"),
                ],
            ),
            [("success", PALETTE[2]), ("rolled back", PALETTE[1])],
            ["day", "finished", "succeeded", "rolled back"],
            rows,
        )
    ]
