"""Readable numbers and times for every page: ``{% load portal_format %}``.

- ``{{ moment|ago }}``: ``<time>`` saying "3 min ago" (or "in 2 min"), with the
  absolute time, seconds and zone on hover; pages may refresh the words from
  the ``datetime`` attribute (``data-ago``) without a reload.
- ``{{ moment|exact }}``: "2026-12-01 20:23:05 UTC" (Django's default hides the
  seconds and the zone).
- ``{{ value|duration }}``: "50 ms", "2 min 0 s", "1 h 5 min" from a timedelta
  or a number of seconds.
- ``{{ value|bytes }}``: "27.5 KB" (1024-based, like ``filesizeformat``).
- ``{{ value|pct }}``: "97.5 %", or "no data yet" for None.

Every filter answers "—" for a missing value instead of an empty cell.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()

NONE = "—"


def _seconds(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def human_duration(value, *, compact: bool = False) -> str:
    """50 ms, 3.2 s, 2 min 0 s, 1 h 5 min, 3 d 4 h (two units at most, never a float).

    ``compact`` (chart axes): a zero second unit is left out ("2 min"), zero is "0"."""
    seconds = _seconds(value)
    if seconds is None:
        return NONE
    if compact and seconds == 0:
        return "0"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{sign}{seconds:.1f} s"
    whole = int(seconds)  # 0:02:00.53 reads "2 min 0 s"
    if whole < 60:
        return f"{sign}{whole} s"
    for unit, size, sub, sub_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // sub_size
            if compact and not rest:
                return f"{sign}{whole // size} {unit}"
            return f"{sign}{whole // size} {unit} {rest} {sub}"
    return f"{sign}{whole} s"  # pragma: no cover (unreachable)


def human_bytes(value) -> str:
    """512 B, 27.5 KB, 3.1 MB, 1.2 GB (1024-based)."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return NONE
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}"
    return NONE  # pragma: no cover


def exact_time(moment: datetime | None) -> str:
    """2026-12-01 20:23:05 UTC, in the portal's time zone."""
    if moment is None:
        return NONE
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def relative_words(moment: datetime, now: datetime | None = None) -> str:
    """just now, 45 s ago, 3 min ago, 2 h 5 min ago, 3 d ago; "in 4 min" for the future."""
    now = now or timezone.now()
    delta = (now - moment).total_seconds()
    future, delta = delta < 0, abs(delta)
    if delta < 5:
        return "just now"
    if delta < 60:
        words = f"{int(delta)} s"
    elif delta < 3600:
        words = f"{int(delta // 60)} min"
    elif delta < 86400:
        hours, minutes = int(delta // 3600), int(delta % 3600 // 60)
        words = f"{hours} h {minutes} min" if minutes and hours < 6 else f"{hours} h"
    else:
        words = f"{int(delta // 86400)} d"
    return f"in {words}" if future else f"{words} ago"


@register.filter
def ago(moment: datetime | None) -> str:
    if not isinstance(moment, datetime):
        return NONE
    return format_html(
        '<time datetime="{}" title="{}" data-ago>{}</time>',
        moment.isoformat(),
        exact_time(moment),
        relative_words(moment),
    )


@register.filter
def exact(moment: datetime | None) -> str:
    return exact_time(moment) if isinstance(moment, datetime) else NONE


@register.filter
def duration(value) -> str:
    return human_duration(value)


@register.filter(name="bytes")
def bytes_filter(value) -> str:
    return human_bytes(value)


@register.filter
def pct(value) -> str:
    if value is None:
        return "no data yet"
    try:
        return f"{float(value):.1f} %"
    except (TypeError, ValueError):
        return NONE
