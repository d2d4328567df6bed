"""Readable cells for every admin page: status and severity badges, relative times with the
exact time and zone on hover, durations ("50 ms", "2 min 0 s") and sizes ("27.5 KB").

The columns are plain callables of the row (Django accepts them in ``list_display`` and
``readonly_fields``), built by small factories so each admin names what it shows::

    list_display = ("id", status_column(), "host", time_column("created"),
                    duration_column("duration_s"), bytes_column("bytes_stored"))

They read only the row's own fields: no query per row. The words and numbers are the
ones the dashboard's template filters print (``portal.templatetags.portal_format``), so
a value reads the same on every page.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString

from portal.templatetags.portal_format import NONE, ago, human_bytes, human_duration

# The colour of a state, whatever model it belongs to: red for what failed or was refused,
# green for what ended well, grey for what simply ended, amber for anything in flight.
BAD = {
    "FAILED", "REJECTED", "VOIDED", "NOT_VERIFIED", "ROLLED_BACK", "TIMEOUT", "DENIED",
    "UNREACHABLE", "SHRANK", "ERROR", "FAILURE",
}  # fmt: skip
OK = {"SUCCEEDED", "COMPLETED", "VERIFIED", "RESOLVED", "SENT", "ACKED", "DELIVERED", "SUCCESS"}
QUIET = {"EXPIRED", "CANCELLED", "SKIPPED", "NONE", ""}
SEVERITY_KIND = {1: "", 2: "warn", 3: "bad", 4: "crit"}
SEVERITY_LABEL = {1: "Low", 2: "Medium", 3: "High", 4: "Critical"}


def status_kind(value: str) -> str:
    """The badge colour class of a state value: "bad", "ok", "" or "warn"."""
    if value in BAD:
        return "bad"
    if value in OK:
        return "ok"
    if value in QUIET:
        return ""
    return "warn"


def badge(
    value: str, *, kind: str | None = None, label: str | None = None, title: str = ""
) -> SafeString:
    """``<span class="pra-badge bad" data-status="FAILED">FAILED</span>``."""
    return format_html(
        '<span class="pra-badge {}" data-status="{}" title="{}">{}</span>',
        status_kind(value) if kind is None else kind,
        value,
        title,
        value if label is None else label,
    )


def severity_badge(severity: int | None) -> SafeString | str:
    if severity is None:
        return NONE
    return format_html(
        '<span class="inc-badge {}" data-severity="{}">{}</span>',
        SEVERITY_KIND.get(severity, ""),
        severity,
        SEVERITY_LABEL.get(severity, str(severity)),
    )


def status_column(field: str = "status", description: str | None = None) -> Callable:
    """A badge of the row's ``field`` (a state), ordered by it."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(obj):
        value = getattr(obj, field)
        return badge(value) if value else NONE

    column.__name__ = f"{field}_badge"
    return column


def severity_column(field: str = "severity") -> Callable:
    @admin.display(description="severity", ordering=field)
    def column(obj):
        return severity_badge(getattr(obj, field))

    column.__name__ = f"{field}_badge"
    return column


def time_column(field: str, description: str | None = None) -> Callable:
    """ "3 min ago", with the exact time and zone on hover (``<time title=...>``)."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(obj):
        value = getattr(obj, field)
        return ago(value) if isinstance(value, datetime) else NONE

    column.__name__ = f"{field}_ago"
    return column


_FIELD = object()


def duration_column(
    field: str, description: str | None = None, *, unit: float = 1.0, ordering=_FIELD
) -> Callable:
    """A duration from a timedelta or a number of seconds (``unit=0.001``: milliseconds);
    ``ordering=None`` for a property that is not a column."""

    @admin.display(
        description=description or field.replace("_", " "),
        ordering=field if ordering is _FIELD else ordering,
    )
    def column(obj):
        value = getattr(obj, field)
        if value is None:
            return NONE
        return human_duration(value if not isinstance(value, int | float) else value * unit)

    column.__name__ = f"{field}_human"
    return column


def bytes_column(field: str, description: str | None = None) -> Callable:
    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(obj):
        value = getattr(obj, field)
        return NONE if value is None else human_bytes(value)

    column.__name__ = f"{field}_human"
    return column
