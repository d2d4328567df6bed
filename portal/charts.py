"""The charts page: a few questions people would rather see than read, drawn as SVG here.

Server-rendered SVG, on purpose: no charting library to vet, pin and update, nothing
fetched from another host, nothing to run in the browser (the page works with scripts
off and in tests that read plain HTML), a few kilobytes per chart, and every mark
carries its exact value (``<title>``, shown on hover) plus a data table under the chart.

This module draws; the apps say what to draw. They register two kinds of providers
here (from their ``charts.py``, imported by their ``AppConfig.ready()``), the way they
register dashboard panels (``portal.dashboard``):

- ``@chart(order=N)``: a function of the window's days returning its charts, drawn with
  ``lines``/``stacked_bars`` into ``Chart`` rows; the page shows them by ``order``;
- ``@approval_waits``: a function of the window's start returning the requests of one
  kind that were fully signed in the window (``Wait`` rows), for the portal's own
  "time to approval" chart.

Each chart costs one bounded query, whatever the window: aggregates are grouped by
day in the database; point charts read at most ``MAX_POINTS`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from portal.templatetags.portal_format import human_duration


def short(seconds: float) -> str:
    return human_duration(seconds, compact=True)


WINDOWS = (7, 14, 30, 90)
DEFAULT_DAYS = 14
MAX_POINTS = 3000

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


def num(value: float) -> str:
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
    frame = Frame(_day_start(days[0]), _day_start(days[-1]) + 86400, nice_ticks(max(totals)), num)
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


def since(days: list[date]) -> datetime:
    return timezone.make_aware(datetime.combine(days[0], time.min))


def midday(day: date) -> float:
    return _day_start(day) + 43200


def as_date(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


# --- the registry -----------------------------------------------------------------------

ChartsFn = Callable[[list[date]], list[Chart]]
_CHARTS: list[tuple[int, ChartsFn]] = []


def chart(order: int) -> Callable[[ChartsFn], ChartsFn]:
    """Decorator: register a provider of charts, shown by ``order`` (ties: registration)."""

    def register(fn: ChartsFn) -> ChartsFn:
        _CHARTS.append((order, fn))
        return fn

    return register


class Wait(NamedTuple):
    """One request fully signed in the window: what it is, its impact, asked and approved."""

    what: str  # "action #12", "restore #3"
    impact: str  # a key of IMPACT_COLOURS
    asked: datetime
    approved: datetime


WaitsFn = Callable[[datetime], list[Wait]]
_WAITS: list[WaitsFn] = []


def chart_providers() -> list[tuple[int, ChartsFn]]:
    """The registered chart providers with their order, in page order."""
    return sorted(_CHARTS, key=lambda entry: entry[0])


def approval_wait_sources() -> tuple[WaitsFn, ...]:
    """The registered approval-wait providers, in registration (app) order."""
    return tuple(_WAITS)


def approval_waits(fn: WaitsFn) -> WaitsFn:
    """Decorator: register a provider of the requests of one kind approved since a time
    (one query, at most ``MAX_POINTS`` rows, the newest approvals)."""
    _WAITS.append(fn)
    return fn


# --- the portal's own chart -------------------------------------------------------------


@chart(order=40)
def time_to_approval(days: list[date]) -> list[Chart]:
    start = since(days)
    found: list[Wait] = []
    for source in approval_wait_sources():
        found += source(start)
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
    return [
        Chart(
            "time-to-approval",
            title,
            "How long do requests wait for people?",
            lines(days, shown, title, fmt=short, connect=False, steps=DURATION_STEPS),
            [(s.name, s.colour) for s in series.values()],
            ["approved", "request", "impact", "waited"],
            rows[-200:],
            note="Auto-approved LOW remediations are left out.",
        )
    ]


def all_charts(days: int) -> list[Chart]:
    window = _days(days)
    found: list[Chart] = []
    for _, provider in chart_providers():
        found += provider(window)
    return found
