"""A backup run's progress, estimated: ``{% run_progress run as progress %}``.

The tool's output size is not known in advance; the previous successful backup of
the same source is the best guess of the total (``bytes_raw``, the bytes the tool
produced, which is what ``progress_bytes`` counts). The time left comes from the
rate so far, or from the previous run's duration before there is a rate. The
backup run page renders this and its script recomputes it on every progress event.
"""

from __future__ import annotations

from django import template
from django.utils import timezone

from portal.templatetags.portal_format import human_duration

register = template.Library()


def estimate(
    *,
    status: str,
    progress: int,
    expected: int | None,
    elapsed: float | None,
    previous_duration: float | None,
) -> dict:
    """{"percent": 0-100 or None (unknown), "eta": words}."""
    if status == "SUCCEEDED":
        return {"percent": 100, "eta": "done"}
    if status == "FAILED":
        percent = min(100, round(100 * progress / expected)) if expected else None
        return {"percent": percent, "eta": "failed"}
    if status == "QUEUED":
        return {"percent": 0 if expected else None, "eta": "waiting for a worker"}
    if not expected:
        return {"percent": None, "eta": "no previous backup to estimate from"}
    if progress >= expected:
        return {"percent": 99, "eta": "any moment now (already larger than the last backup)"}
    fraction = progress / expected
    if elapsed and progress and elapsed > 1:
        left = (expected - progress) / (progress / elapsed)
    elif previous_duration:
        left = previous_duration * (1 - fraction)
    else:
        return {"percent": int(100 * fraction), "eta": "estimating…"}
    return {"percent": int(100 * fraction), "eta": f"about {human_duration(left)} left"}


@register.simple_tag
def run_progress(run) -> dict:
    from backups.choices import RunStatus
    from backups.models import BackupRun

    previous = (
        BackupRun.objects.filter(
            source_id=run.source_id,
            status=RunStatus.SUCCEEDED,
            restore__isnull=True,
            created__lt=run.created,
            bytes_raw__gt=0,
        )
        .order_by("-created")
        .values("pk", "bytes_raw", "duration_s")
        .first()
    )
    expected = previous["bytes_raw"] if previous else None
    elapsed = (timezone.now() - run.started_at).total_seconds() if run.started_at else None
    found = estimate(
        status=run.status,
        progress=run.progress_bytes,
        expected=expected,
        elapsed=elapsed,
        previous_duration=previous["duration_s"] if previous else None,
    )
    return {
        **found,
        "expected": expected or 0,
        "previous_id": previous["pk"] if previous else None,
        "previous_duration": (previous["duration_s"] if previous else 0) or 0,
        "started_ms": int(run.started_at.timestamp() * 1000) if run.started_at else 0,
    }


VERIFICATION_WORDS = {"PENDING": "not run", "VERIFIED": "passed", "FAILED": "failed"}


@register.filter
def verification_words(value: str) -> str:
    """A backup's verification as not run / passed / failed."""
    return VERIFICATION_WORDS.get(value, value or "—")


@register.simple_tag
def run_links(run) -> dict:
    """What a backup run is linked to: the drills that restored it and the restores of its
    artifacts (two queries, on the run's own page)."""
    from backups.models import RestoreRequest

    return {
        "drills": list(run.drills.order_by("-created")[:10]),
        "restores": list(
            RestoreRequest.objects.filter(artifact__run=run)
            .select_related("artifact")
            .order_by("-created")[:10]
        ),
    }
