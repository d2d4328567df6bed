"""The charts page: a few questions people would rather see than read, drawn as SVG here.

Server-rendered SVG, on purpose: no charting library to vet, pin and update, nothing
fetched from another host, nothing to run in the browser (the page works with scripts
off and in tests that read plain HTML), a few kilobytes per chart, and every mark
carries its exact value (``<title>``, shown on hover) plus a data table under the chart.

Each chart costs one bounded query, whatever the window: aggregates are grouped by
day in the database; point charts read at most ``MAX_POINTS`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from portal.templatetags.portal_format import human_bytes, human_duration


def _short(seconds: float) -> str:
    return human_duration(seconds, compact=True)


WINDOWS = (7, 14, 30, 90)
DEFAULT_DAYS = 14
MAX_POINTS = 3000

# Seed targets (README, incidents.metrics).
MTTD_TARGET = 120.0
MTTR_TARGET = 600.0
SUCCESS_TARGET = 95.0
ROLLBACK_TARGET = 2.0

PALETTE = (
    "#1a5a7a",
    "#c2410c",
    "#15803d",
    "#7c3aed",
    "#b45309",
    "#0f766e",
    "#be185d",
    "#4d7c0f",
    "#1d4ed8",
    "#9f1239",
)
SEVERITY_COLOURS = {1: "#9aa5b1", 2: "#e0a100", 3: "#d9480f", 4: "#9b1c1c"}
IMPACT_COLOURS = {"LOW": "#15803d", "MEDIUM": "#e0a100", "HIGH": "#b3261e"}

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 12, 30


def window_days(raw: str | None) -> int:
    try:
        days = int(raw or DEFAULT_DAYS)
    except ValueError:
        return DEFAULT_DAYS
    return days if days in WINDOWS else DEFAULT_DAYS


# --- drawing ----------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    colour: str
    points: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, hover text


@dataclass
class Chart:
    key: str
    title: str
    question: str
    svg: SafeString
    legend: list[tuple[str, str]]
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    @property
    def empty(self) -> bool:
        return not self.rows


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


DURATION_STEPS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    21600,
    43200,
    86400,
    172800,
    604800,
)


def nice_ticks(top: float, *, count: int = 4, steps: Iterable[float] | None = None) -> list[float]:
    """0 and a few round values up to at least ``top``."""
    top = top if top > 0 else 1.0
    raw = top / count
    if steps is None:
        magnitude = 10 ** math.floor(math.log10(raw))
        candidates = [m * magnitude for m in (1, 2, 2.5, 5, 10)]
    else:
        candidates = list(steps)
    step = next((c for c in candidates if c >= raw), candidates[-1])
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


class Frame:
    """A plot area: x from ``x0`` to ``x1`` (seconds since the epoch), y from 0 to the top tick."""

    def __init__(self, x0: float, x1: float, ticks: list[float], fmt: Callable[[float], str]):
        self.x0, self.x1 = x0, max(x1, x0 + 1)
        self.ticks, self.fmt = ticks, fmt
        self.top = ticks[-1] or 1
        self.w = WIDTH - LEFT - RIGHT
        self.h = HEIGHT - TOP - BOTTOM

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * self.w

    def y(self, value: float) -> float:
        return TOP + self.h - min(value, self.top) / self.top * self.h

    def axes(self, days: list[date]) -> list[str]:
        parts = []
        for tick in self.ticks:
            y = self.y(tick)
            parts.append(
                f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                f'<text class="ylab" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{escape(self.fmt(tick))}</text>"
            )
        every = max(1, math.ceil(len(days) / 8))
        for i, day in enumerate(days):
            if i % every:
                continue
            x = self.x(_day_start(day) + 43200)
            parts.append(
                f'<text class="xlab" x="{x:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                f"{day:%b %d}</text>"
            )
        base = self.y(0)
        parts.append(
            f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base:.1f}" y2="{base:.1f}"/>'
        )
        return parts

    def target(self, value: float, label: str) -> str:
        y = self.y(value)
        return (
            f'<g class="target"><line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
            f"<title>{escape(label)}</title></g>"
        )


def _svg(parts: list[str], label: str) -> SafeString:
    body = "".join(parts)
    return mark_safe(  # noqa: S308 (every text and attribute value above is escaped)
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}"'
        f' xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _empty_svg(label: str, words: str = "no data yet") -> SafeString:
    return _svg(
        [
            f'<text class="nodata" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            f"{escape(words)}</text>"
        ],
        label,
    )


def stacked_bars(days: list[date], series: list[Series], label: str) -> SafeString:
    """One bar per day, ``series`` stacked; point x is the day's index."""
    totals = [0.0] * len(days)
    for s in series:
        for x, y, _ in s.points:
            totals[int(x)] += y
    if not any(totals):
        return _empty_svg(label)
    frame = Frame(_day_start(days[0]), _day_start(days[-1]) + 86400, nice_ticks(max(totals)), _num)
    parts = frame.axes(days)
    band = frame.w / len(days)
    width = max(2.0, band * 0.7)
    base = [0.0] * len(days)
    for s in series:
        for x, y, text in s.points:
            if not y:
                continue
            i = int(x)
            left = frame.x(_day_start(days[i])) + (band - width) / 2
            y_top, y_bottom = frame.y(base[i] + y), frame.y(base[i])
            base[i] += y
            parts.append(
                f'<rect x="{left:.1f}" y="{y_top:.1f}" width="{width:.1f}" '
                f'height="{max(0.5, y_bottom - y_top):.1f}" fill="{s.colour}">'
                f"<title>{escape(text)}</title></rect>"
            )
    return _svg(parts, label)


def lines(
    days: list[date],
    series: list[Series],
    label: str,
    *,
    fmt: Callable[[float], str],
    targets: Iterable[tuple[float, str]] = (),
    connect: bool = True,
    steps: Iterable[float] | None = None,
    top: float | None = None,
) -> SafeString:
    """Points (x in epoch seconds) per series, joined unless ``connect`` is off, over the
    window of ``days``, with dashed target lines."""
    targets = list(targets)
    values = [y for s in series for _, y, _ in s.points]
    if not values:
        return _empty_svg(label)
    ticks = (
        nice_ticks(top, steps=steps)
        if top is not None
        else nice_ticks(max([*values, *(t * 1.15 for t, _ in targets)]), steps=steps)
    )
    frame = Frame(_day_start(days[0]), _day_start(days[-1]) + 86400, ticks, fmt)
    parts = frame.axes(days)
    for value, text in targets:
        parts.append(frame.target(value, text))
    for s in series:
        points = sorted(s.points)
        if connect and len(points) > 1:
            coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y, _ in points)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{s.colour}"/>')
        for x, y, text in points:
            parts.append(
                f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3.2" fill="{s.colour}">'
                f"<title>{escape(text)}</title></circle>"
            )
    return _svg(parts, label)


# --- time helpers -----------------------------------------------------------------------


def _days(days: int) -> list[date]:
    today = timezone.localdate()
    return [today - timedelta(days=days - 1 - i) for i in range(days)]


def _day_start(day: date) -> float:
    return timezone.make_aware(datetime.combine(day, time.min)).timestamp()


def _since(days: list[date]) -> datetime:
    return timezone.make_aware(datetime.combine(days[0], time.min))


def _midday(day: date) -> float:
    return _day_start(day) + 43200


def _as_date(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


# --- the charts -------------------------------------------------------------------------


def incidents_per_day(days: list[date]) -> Chart:
    from incidents.choices import Severity
    from incidents.models import Incident

    index = {day: i for i, day in enumerate(days)}
    counts: dict[tuple[date, int], int] = {}
    for row in (
        Incident.objects.filter(opened_at__gte=_since(days))
        .annotate(day=TruncDate("opened_at"))
        .values("day", "severity")
        .annotate(n=Count("id"))
        .order_by()
    ):
        counts[(_as_date(row["day"]), row["severity"])] = row["n"]
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
    return Chart(
        "incidents-per-day",
        title,
        "Is it getting quieter?",
        stacked_bars(days, series, title),
        [(s.name, s.colour) for s in series],
        ["day", *(s.label for s in Severity)],
        rows,
    )


def detect_and_resolve(days: list[date]) -> list[Chart]:
    from incidents.models import Incident

    detect = ExpressionWrapper(F("opened_at") - F("detected_at"), output_field=DurationField())
    resolve = ExpressionWrapper(F("resolved_at") - F("opened_at"), output_field=DurationField())
    found = list(
        Incident.objects.filter(opened_at__gte=_since(days))
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
                _midday(_as_date(row["day"])),
                row[column].total_seconds(),
                f"{_as_date(row['day']):%a %b %d}: {name} {human_duration(row[column])} "
                f"over {row[count_key]} incident(s)",
            )
            for row in found
            if row[column] is not None
        ]
        label = f"{name} per day (mean) against its {_short(target)} target"
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
                    fmt=_short,
                    targets=[(target, f"target {_short(target)}")],
                    steps=DURATION_STEPS,
                ),
                [(name, PALETTE[0]), (f"target {_short(target)}", "#b3261e")],
                ["day", name, "incidents"],
                [
                    [f"{_as_date(r['day']):%Y-%m-%d}", human_duration(r[column]), str(r[count_key])]
                    for r in found
                    if r[column] is not None
                ],
            )
        )
    return charts


def autopatch_rates(days: list[date]) -> Chart:
    from incidents.choices import AttemptStatus
    from incidents.models import AutoPatchAttempt

    finished = [AttemptStatus.SUCCEEDED, AttemptStatus.ROLLED_BACK, AttemptStatus.FAILED]
    found = list(
        AutoPatchAttempt.objects.filter(finished_at__gte=_since(days), status__in=finished)
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
        day, done = _as_date(row["day"]), row["done"]
        ok, rolled = 100.0 * row["ok"] / done, 100.0 * row["rolled"] / done
        success.points.append((_midday(day), ok, f"{day:%b %d}: {ok:.1f} % of {done} succeeded"))
        rollback.points.append(
            (_midday(day), rolled, f"{day:%b %d}: {rolled:.1f} % of {done} rolled back")
        )
        rows.append([f"{day:%Y-%m-%d}", str(done), f"{ok:.1f} %", f"{rolled:.1f} %"])
    title = "Auto-patch success and rollback rates per day"
    return Chart(
        "autopatch-rates",
        title,
        "Does self-healing work?",
        lines(
            days,
            [success, rollback],
            title,
            fmt=lambda v: f"{_num(v)} %",
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


def time_to_approval(days: list[date]) -> Chart:
    from backups.models import RestoreRequest
    from pra.models import PRAAction

    since = _since(days)
    found: list[tuple[str, str, datetime, datetime]] = []
    actions = (
        PRAAction.objects.filter(approved_at__gte=since)
        .exclude(impact="LOW", auto_approve_requested=True)  # approved by the rule, not people
        .order_by("-approved_at")
        .values_list("pk", "impact", "created", "approved_at")[:MAX_POINTS]
    )
    found += [
        (f"action #{pk}", impact, created, at)
        for pk, impact, created, at in actions
        if at is not None  # filtered on approved_at above: never None here
    ]
    restores = (
        RestoreRequest.objects.filter(approved_at__gte=since)
        .order_by("-approved_at")
        .values_list("pk", "mode", "created", "approved_at")[:MAX_POINTS]
    )
    found += [
        (f"restore #{pk}", "HIGH" if mode == "overwrite" else "MEDIUM", created, at)
        for pk, mode, created, at in restores
        if at is not None
    ]
    series = {impact: Series(impact, colour) for impact, colour in IMPACT_COLOURS.items()}
    rows = []
    for what, impact, created, at in sorted(found, key=lambda f: f[3]):
        wait = (at - created).total_seconds()
        series[impact].points.append(
            (
                at.timestamp(),
                wait,
                f"{what} ({impact}) approved {human_duration(wait)} after "
                f"it was asked, {timezone.localtime(at):%b %d %H:%M}",
            )
        )
        rows.append(
            [timezone.localtime(at).strftime("%Y-%m-%d %H:%M"), what, impact, human_duration(wait)]
        )
    title = "Time to approval (asked → fully signed)"
    shown = [s for s in series.values() if s.points]
    return Chart(
        "time-to-approval",
        title,
        "How long do requests wait for people?",
        lines(days, shown, title, fmt=_short, connect=False, steps=DURATION_STEPS),
        [(s.name, s.colour) for s in series.values()],
        ["approved", "request", "impact", "waited"],
        rows[-200:],
        note="Auto-approved LOW remediations are left out.",
    )


def backup_runs(days: list[date]) -> list[Chart]:
    from backups.choices import RunStatus
    from backups.models import BackupRun

    found = list(
        BackupRun.objects.filter(
            created__gte=_since(days), status=RunStatus.SUCCEEDED, restore__isnull=True
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
              lines(days, list(took.values()), took_title, fmt=_short,
                    steps=DURATION_STEPS),
              legend, header, rows[-200:]),
    ]  # fmt: skip


def drill_restore_times(days: list[date]) -> Chart:
    """Each restore drill's measured restore time, per source, against the RTO targets (one
    dashed line per distinct target); failed drills are listed under the chart."""
    from backups.choices import DrillStatus
    from backups.models import BackupDrill

    found = list(
        BackupDrill.objects.filter(
            created__gte=_since(days), status__in=[DrillStatus.SUCCEEDED, DrillStatus.FAILED]
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
        (value, f"target {_short(value)} ({', '.join(sorted(who))})")
        for value, who in sorted(targets.items())
    ]
    title = "Restore drills: restore time per source against its RTO target"
    failed = sum(1 for row in rows if row[-1] == "FAILED")
    return Chart(
        "drill-restore-times",
        title,
        "Could we restore in time if we had to?",
        lines(days, list(series.values()), title, fmt=_short, targets=lines_at,
              steps=DURATION_STEPS),
        [(name, colours[name]) for name in names] + [("RTO target", "#b3261e")],
        ["drill", "source", "id", "restore took", "target", "result"],
        rows[-200:],
        note=f"{failed} failed drill(s) in the window (no restore time to draw; listed below)."
        if failed
        else "",
    )  # fmt: skip


def all_charts(days: int) -> list[Chart]:
    window = _days(days)
    return [
        incidents_per_day(window),
        *detect_and_resolve(window),
        autopatch_rates(window),
        time_to_approval(window),
        *backup_runs(window),
        drill_restore_times(window),
    ]
