"""Notifications: route an event to channels, send it from RQ with retries, never lose it.

``notify`` runs inside the caller's transaction: it writes one ``Notification``
row per matching channel and enqueues ``portal.jobs.send_notification`` for each
on commit. ``deliver`` (the job's body) claims the row, sends, and records the
outcome; after the last retry the row is FAILED, audited and logged. The rows
are the durable record: ``resend_stuck`` re-enqueues PENDING ones whose job is
gone from Redis, and /metrics counts them by status.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.db import DatabaseError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from portal.audit import Actor, record, subject_of
from portal.choices import (
    SEVERITY_RANK,
    AuditEventType,
    ChannelKind,
    NotificationKind,
    NotificationSeverity,
    NotificationStatus,
)
from portal.lib.bulk import insert_rows
from portal.lib.env import env_secret
from portal.lib.webhooks import WebhookError, post_json, redact
from portal.models import EscalationLevel, Notification, NotificationChannel

logger = logging.getLogger(__name__)

QUEUE = "default"
# Seconds between RQ retries; one first attempt plus one per interval.
RETRY_INTERVALS: tuple[int, ...] = (10, 30, 120, 600)
SEND_TIMEOUT = 5.0
# A sender holds a row this long; a crashed sender's claim lapses after it.
CLAIM_SECONDS = 60
STUCK_AFTER = timedelta(minutes=5)

DEFAULT_ESCALATION_LEVELS = (
    (1, "operator"),
    (2, "technical"),
    (3, "development"),
    (4, "architect"),
)


class DeliveryError(Exception):
    """One attempt failed; the message is redacted (safe to store and log)."""


class WebhookPayload(TypedDict):
    """What a generic webhook receives (JSON)."""

    id: int
    kind: str
    title: str
    body: str
    severity: str
    subject: dict[str, str] | None
    escalation_level: int | None
    url: str
    sent_at: str


def job_id(notification_id: int) -> str:
    return f"notify-{notification_id}"


def max_attempts() -> int:
    return 1 + len(RETRY_INTERVALS)


# --- routing --------------------------------------------------------------------------


def channels_for(
    kind: str, severity: str, escalation_level: int | None = None
) -> list[NotificationChannel]:
    """Enabled channels subscribed to ``kind`` at ``severity``, plus the level's channels."""
    rank = SEVERITY_RANK[severity]
    allowed = [s for s, r in SEVERITY_RANK.items() if r <= rank]
    found: dict[int, NotificationChannel] = {}
    for channel in NotificationChannel.objects.filter(enabled=True, min_severity__in=allowed):
        if not channel.kinds or kind in channel.kinds:
            found[channel.pk] = channel
    if escalation_level is not None:
        level = EscalationLevel.objects.filter(level=escalation_level).first()
        if level is None:
            logger.info("escalation level %s is not configured", escalation_level)
        else:
            for channel in level.channels.filter(enabled=True):
                found.setdefault(channel.pk, channel)
    return [found[pk] for pk in sorted(found)]


def notify(
    kind: str,
    *,
    title: str,
    body: str,
    subject: models.Model | tuple[str, str] | None = None,
    severity: str = "info",
    escalation_level: int | None = None,
    url: str = "",
) -> list[int]:
    """Queue ``kind`` for every matching channel; return the new notification ids.

    Call it inside the transaction that made the change: the rows commit (or
    roll back) with it and the send jobs go out only on commit. Never fails the
    caller over notifications: no channel means nothing to do (logged at INFO),
    and a database error here is logged and swallowed within a savepoint.
    ``severity`` is info, warning or critical; an unknown kind or severity is a
    programming error and raises ``ValueError``.
    """
    kind = NotificationKind(kind)
    severity = NotificationSeverity(str(severity).lower())
    subject_type, subject_id = subject_of(subject)
    try:
        with transaction.atomic():
            channels = channels_for(kind, severity, escalation_level)
            ids = [
                Notification.objects.create(
                    channel=channel,
                    kind=kind,
                    title=" ".join(title.split())[:200],
                    body=body[:10000],
                    severity=severity,
                    subject_type=subject_type,
                    subject_id=subject_id,
                    link=url[:500],
                    escalation_level=escalation_level,
                ).pk
                for channel in channels
            ]
    except DatabaseError:
        logger.exception("could not record %s notification %r", kind, title)
        return []
    if not ids:
        logger.info("no notification channel for %s (%s); nothing sent", kind, title)
    for pk in ids:
        _enqueue_on_commit(pk)
    return ids


class Message(TypedDict):
    """One message of a ``notify_many`` call (its subject, its words, its page)."""

    title: str
    body: str
    subject: models.Model | tuple[str, str] | None
    url: str


def notify_many(
    kind: str,
    messages: list[Message],
    *,
    severity: str = "info",
    escalation_level: int | None = None,
) -> list[int]:
    """``notify`` for many subjects of one kind, severity and level (a sweep's batch).

    The same routing and rows as calling ``notify`` once per message, written with one
    routing lookup and one multi-row INSERT. On commit one job, ``deliver_many``, makes
    the first attempt of them all (one Redis round trip instead of one job per row);
    a row whose first attempt fails gets its own job with the usual retries.
    """
    kind = NotificationKind(kind)
    severity = NotificationSeverity(str(severity).lower())
    if not messages:
        return []
    try:
        with transaction.atomic():
            channels = channels_for(kind, severity, escalation_level)
            pairs = [(m, channel.pk) for m in messages for channel in channels]
            subjects = [subject_of(m["subject"]) for m, _ in pairs]
            ids = [
                pk
                for (pk,) in insert_rows(
                    Notification,
                    {
                        "channel": [channel for _, channel in pairs],
                        "title": [" ".join(m["title"].split())[:200] for m, _ in pairs],
                        "body": [m["body"][:10000] for m, _ in pairs],
                        "subject_type": [t for t, _ in subjects],
                        "subject_id": [i for _, i in subjects],
                        "link": [m["url"][:500] for m, _ in pairs],
                    },
                    {
                        "kind": kind.value,
                        "severity": severity.value,
                        "escalation_level": escalation_level,
                        "attempts": 0,
                        "last_error": "",
                        "status": NotificationStatus.PENDING.value,
                        "created": timezone.now(),
                    },
                )  # fmt: skip
            ]
    except DatabaseError:
        logger.exception("could not record %s %s notification(s)", len(messages), kind)
        return []
    if not ids:
        logger.info(
            "no notification channel for %s (%s messages); nothing sent", kind, len(messages)
        )
        return []
    transaction.on_commit(partial(_enqueue_batch_quietly, ids))
    return ids


# A batch job stops starting first attempts after this many seconds and hands the rest to
# their own jobs, so it ends well before ``resend_stuck`` (STUCK_AFTER) would look at them.
BATCH_BUDGET = 60.0


def batch_job_id(ids: list[int]) -> str:
    return f"notify-batch-{ids[0]}-{ids[-1]}-{len(ids)}"


def _enqueue_batch_quietly(ids: list[int]) -> None:
    import django_rq

    try:
        django_rq.get_queue(QUEUE, commit_mode="auto").enqueue(
            "portal.notify.deliver_many",
            ids,
            job_id=batch_job_id(ids),
            job_timeout=int(BATCH_BUDGET + 4 * SEND_TIMEOUT + 60),
            result_ttl=86400,
            failure_ttl=7 * 86400,
        )
    except Exception as exc:
        logger.warning(
            "%s notification(s) not enqueued (%s); resend_stuck will retry them",
            len(ids),
            exc.__class__.__name__,
        )


def deliver_many(notification_ids: list[int], budget: float = BATCH_BUDGET) -> dict[str, int]:
    """First attempts of a ``notify_many`` batch, one after the other (an RQ job).

    Each row goes through ``deliver`` (claim, send, record), so nothing is sent twice
    even if this job and a row's own job meet. A failed first attempt hands the row to
    its own job (``enqueue``), which retries on the usual schedule; past ``budget``
    seconds the rows not tried yet get their own jobs too, in one pipeline.
    """
    import time

    started = time.monotonic()
    tally = {"sent": 0, "retrying": 0, "handed_on": 0, "other": 0}
    for position, pk in enumerate(notification_ids):
        if time.monotonic() - started > budget:
            rest = notification_ids[position:]
            _enqueue_each(rest)
            tally["handed_on"] += len(rest)
            break
        try:
            outcome = deliver(pk)
        except DeliveryError:
            enqueue(pk)  # its own job from here on, with the retry schedule
            tally["retrying"] += 1
            continue
        tally["sent" if outcome == "sent" else "other"] += 1
    return tally


def _enqueue_each(ids: list[int]) -> None:
    """One send job per row, in one Redis pipeline (rows whose job may not exist yet)."""
    import django_rq
    from rq import Retry

    queue = django_rq.get_queue(QUEUE, commit_mode="auto")
    retry = Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS))
    for start in range(0, len(ids), 500):
        queue.enqueue_many(
            [
                queue.prepare_data(
                    "portal.jobs.send_notification",
                    (pk,),
                    job_id=job_id(pk),
                    retry=retry,
                    result_ttl=86400,
                    failure_ttl=7 * 86400,
                )
                for pk in ids[start : start + 500]
                if not _job_state(job_id(pk))[1]
            ]
        )


def _enqueue_on_commit(notification_id: int) -> None:
    transaction.on_commit(partial(_enqueue_quietly, notification_id))


def _enqueue_quietly(notification_id: int) -> None:
    """After commit: a Redis outage must not fail the caller; the sweep resends later."""
    try:
        enqueue(notification_id)
    except Exception as exc:
        logger.warning(
            "notification %s not enqueued (%s); resend_stuck will retry it",
            notification_id,
            exc.__class__.__name__,
        )


def _job_state(jid: str):
    """(job or None, alive?) for the send job ``jid``."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.registry import ScheduledJobRegistry

    from portal.lib.redis import get_redis

    connection = get_redis()
    try:
        job = Job.fetch(jid, connection=connection)
    except NoSuchJobError:
        return None, False
    status = job.get_status(refresh=False)
    if status in {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED}:
        return job, True
    if status == JobStatus.SCHEDULED:
        # A retry waiting for its time; long overdue means no worker runs a scheduler.
        try:
            due = ScheduledJobRegistry(QUEUE, connection=connection).get_scheduled_time(jid)
        except NoSuchJobError:
            return job, False
        return job, due > timezone.now() - STUCK_AFTER
    return job, False


def enqueue(notification_id: int) -> bool:
    """Enqueue the send job unless one is already waiting or running; True if enqueued."""
    import django_rq
    from rq import Retry

    jid = job_id(notification_id)
    job, alive = _job_state(jid)
    if alive:
        return False
    if job is not None:
        job.delete()  # a finished or failed run of an earlier round
    # Auto mode: callers already run this after commit.
    django_rq.get_queue(QUEUE, commit_mode="auto").enqueue(
        "portal.jobs.send_notification",
        notification_id,
        job_id=jid,
        retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
        result_ttl=86400,
        failure_ttl=7 * 86400,
    )
    return True


# --- sending --------------------------------------------------------------------------


def _claim(notification_id: int) -> Notification | None:
    now = timezone.now()
    won = (
        Notification.objects.filter(pk=notification_id, status=NotificationStatus.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(attempts=F("attempts") + 1, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )
    if not won:
        return None
    return Notification.objects.select_related("channel").get(pk=notification_id)


def deliver(notification_id: int) -> str:
    """Send one notification (the body of ``portal.jobs.send_notification``).

    Claims the PENDING row (so two runs never send at once), counts the attempt,
    sends, then records SENT with a compare-and-swap: a retried job never sends
    twice after a success. A failure raises ``DeliveryError`` so RQ retries;
    the last allowed attempt instead marks the row FAILED, writes a
    NOTIFICATION_FAILED audit event and logs a WARNING, all redacted.
    """
    row = _claim(notification_id)
    if row is None:
        current = Notification.objects.filter(pk=notification_id).first()
        if current is None:
            return "gone"
        if current.status != NotificationStatus.PENDING:
            return f"already {current.status.lower()}"
        return "busy"
    try:
        _send(row)
    except Exception as exc:
        error = _describe(exc, row.channel)
    else:
        Notification.objects.filter(pk=row.pk, status=NotificationStatus.PENDING).update(
            status=NotificationStatus.SENT,
            sent_at=timezone.now(),
            claimed_until=None,
            last_error="",
        )
        return "sent"

    final = row.attempts >= max_attempts()
    with transaction.atomic():
        moved = Notification.objects.filter(pk=row.pk, status=NotificationStatus.PENDING).update(
            last_error=error,
            claimed_until=None,
            status=NotificationStatus.FAILED if final else NotificationStatus.PENDING,
        )
        if final and moved:
            record(
                AuditEventType.NOTIFICATION_FAILED,
                actor=Actor.system("notify"),
                subject=row,
                details={
                    "channel": row.channel.name,
                    "channel_kind": row.channel.kind,
                    "kind": row.kind,
                    "title": row.title,
                    "subject_type": row.subject_type,
                    "subject_id": row.subject_id,
                    "attempts": row.attempts,
                    "error": error,
                },
            )
    if final:
        logger.warning(
            "notification %s (%s) to channel %r FAILED after %s attempts: %s",
            row.pk,
            row.kind,
            row.channel.name,
            row.attempts,
            error,
        )
        return "failed"
    logger.info("notification %s attempt %s failed: %s", row.pk, row.attempts, error)
    raise DeliveryError(error)


def _describe(exc: Exception, channel: NotificationChannel) -> str:
    """A short, redacted account of a failed attempt."""
    text = str(exc) if isinstance(exc, DeliveryError | WebhookError) else f"{exc!r}"
    try:
        url = _channel_url(channel) if channel.kind != ChannelKind.EMAIL else ""
    except DeliveryError:
        url = ""
    return redact(text, url)[:1000]


def _channel_url(channel: NotificationChannel) -> str:
    if channel.url:
        return channel.url
    try:
        value = (env_secret(channel.url_env) or "").strip()
    except ImproperlyConfigured as exc:
        raise DeliveryError(str(exc)) from None
    if not value:
        raise DeliveryError(f"environment variable {channel.url_env} is not set")
    return value


def _absolute(link: str) -> str:
    base = settings.PORTAL_BASE_URL
    return f"{base}{link}" if link.startswith("/") and base else link


def _send(row: Notification) -> None:
    channel = row.channel
    if channel.kind == ChannelKind.EMAIL:
        _send_email(row, channel.recipient_list)
        return
    url = _channel_url(channel)
    payload: Any = (
        _slack_payload(row) if channel.kind == ChannelKind.SLACK else webhook_payload(row)
    )
    try:
        post_json(url, payload, timeout=SEND_TIMEOUT, headers={"Idempotency-Key": job_id(row.pk)})
    except WebhookError as exc:
        raise DeliveryError(str(exc)) from None


def webhook_payload(row: Notification) -> WebhookPayload:
    """The generic webhook's JSON document for ``row``."""
    return WebhookPayload(
        id=row.pk,
        kind=row.kind,
        title=row.title,
        body=row.body,
        severity=row.severity,
        subject={"type": row.subject_type, "id": row.subject_id} if row.subject_type else None,
        escalation_level=row.escalation_level,
        url=_absolute(row.link),
        sent_at=timezone.now().isoformat(),
    )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_payload(row: Notification) -> dict[str, str]:
    lines = [f"*[{row.severity.upper()}] {_slack_escape(row.title)}*"]
    if row.escalation_level:
        lines[0] += f" (escalated to L{row.escalation_level})"
    if row.body:
        lines.append(_slack_escape(row.body))
    link = _absolute(row.link)
    if link.startswith(("http://", "https://")):
        lines.append(f"<{link}|Open in the Ops Portal>")
    elif link:
        lines.append(_slack_escape(link))
    return {"text": "\n".join(lines)}


def _send_email(row: Notification, recipients: list[str]) -> None:
    if not recipients:
        raise DeliveryError("the email channel has no recipients")
    subject = " ".join(f"[{row.severity.upper()}] {row.title}".split())
    parts = [row.body]
    if row.link:
        parts.append(f"Open: {_absolute(row.link)}")
    parts.append(f"Kind: {row.get_kind_display()}")
    if row.escalation_level:
        parts.append(f"Escalation level: L{row.escalation_level}")
    try:
        send_mail(
            subject,
            "\n\n".join(p for p in parts if p),
            settings.DEFAULT_FROM_EMAIL,
            recipients,
            fail_silently=False,
        )
    except Exception as exc:
        raise DeliveryError(f"email: {exc.__class__.__name__}: {exc}") from None


# --- people's actions and safety nets ---------------------------------------------------


def send_test(channel: NotificationChannel, *, by: Any) -> Notification:
    """Queue a test message to ``channel`` (even a disabled one), bypassing routing."""
    with transaction.atomic():
        row = Notification.objects.create(
            channel=channel,
            kind=NotificationKind.TEST,
            title=f"Test notification for {channel.name}",
            body=f"Sent from the Ops Portal by {Actor.of(by).label} to check this channel.",
            severity=NotificationSeverity.INFO,
        )
        record(
            AuditEventType.NOTIFICATION_TEST,
            actor=by,
            subject=row,
            details={"channel": channel.name, "channel_kind": channel.kind},
        )
        _enqueue_on_commit(row.pk)
    return row


def retry_notification(notification: Notification | int, *, by: Any) -> bool:
    """FAILED -> PENDING with a fresh round of attempts; False if it was not FAILED."""
    pk = notification.pk if isinstance(notification, Notification) else notification
    with transaction.atomic():
        won = Notification.objects.filter(pk=pk, status=NotificationStatus.FAILED).update(
            status=NotificationStatus.PENDING, attempts=0, claimed_until=None
        )
        if not won:
            return False
        record(AuditEventType.NOTIFICATION_RETRIED, actor=by, subject=("portal.notification", pk))
        _enqueue_on_commit(pk)
    return True


def resend_stuck(now=None) -> list[int]:
    """Re-enqueue PENDING notifications older than five minutes whose job is gone.

    Catches Redis flushes and restarts, enqueue failures after commit, and
    retries stranded because no worker runs the RQ scheduler.
    """
    now = now or timezone.now()
    stuck = Notification.objects.filter(
        status=NotificationStatus.PENDING, created__lt=now - STUCK_AFTER
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    requeued = []
    for pk in stuck.values_list("pk", flat=True):
        if enqueue(pk):
            requeued.append(pk)
    if requeued:
        logger.warning("re-enqueued %s stuck notification(s): %s", len(requeued), requeued)
    return requeued
