"""Notifications: routing, the send job through a real RQ worker, real receivers.

Webhook and Slack channels post to a real HTTP server on loopback; email goes
through Django's SMTP backend to a real SMTP server (aiosmtpd) on loopback.
Jobs run in a real RQ worker in burst mode. RQ retries with an interval need
the RQ scheduler, so the retry tests set the intervals to 0 (RQ then re-enqueues
at once and the same burst picks the retry up); the production intervals are
checked on the enqueued job instead.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import django_rq
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from rq.job import Job

from portal import notify as notify_mod
from portal.choices import AuditEventType, ChannelKind, NotificationKind, NotificationStatus
from portal.jobs import send_notification
from portal.lib.redis import get_redis
from portal.lib.webhooks import redact
from portal.models import (
    ApprovalRule,
    AuditEvent,
    EscalationLevel,
    Notification,
    NotificationChannel,
)
from portal.notify import DeliveryError, notify
from pra import actions
from pra.choices import ActionStatus, FailureCause
from pra.models import PRAAction
from tests.factories import offline_host, propose
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db

SECRET_TOKEN = "T0SECRET/B0SECRET/xoxb-very-secret-token"
SECRET_QUERY = "sig=qq-secret-signature-99"


# --- real receivers -----------------------------------------------------------------------


class Receiver:
    """A loopback HTTP server recording each POST; answers ``statuses`` in order, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                # A careless receiver echoing the URL: redaction must still hold.
                reply = b"ok" if status < 300 else f"no hook at {self.path}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass  # the path is the secret: keep it off stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def json(self, index: int = -1) -> dict:
        return json.loads(self.requests[index][2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on loopback; Django's SMTP backend pointed at it."""
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    settings.DEFAULT_FROM_EMAIL = "portal@ops.test"
    yield mailbox
    controller.stop()


@pytest.fixture
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(notify_mod, "RETRY_INTERVALS", (0, 0, 0, 0))


def channel(name: str, kind: str = ChannelKind.WEBHOOK, **fields) -> NotificationChannel:
    if kind in {ChannelKind.WEBHOOK, ChannelKind.SLACK} and not fields.get("url_env"):
        fields.setdefault("url", "http://127.0.0.1:9/hook")
    obj = NotificationChannel(name=name, kind=kind, **fields)
    obj.full_clean()
    obj.save()
    return obj


@pytest.fixture
def send(django_capture_on_commit_callbacks):
    """notify() inside a committed transaction (its jobs go out on commit)."""

    def _send(kind=NotificationKind.PRA_FAILED, **kwargs):
        kwargs.setdefault("title", "Something happened")
        kwargs.setdefault("body", "Details of what happened.")
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            return notify(kind, **kwargs)

    return _send


def _channels_of(ids: list[int]) -> set[str]:
    return set(Notification.objects.filter(pk__in=ids).values_list("channel__name", flat=True))


# --- routing ------------------------------------------------------------------------------


def test_it_routes_by_kind_and_minimum_severity():
    channel("all")
    channel("pra-warn", kinds=[NotificationKind.PRA_FAILED], min_severity="warning")
    channel("backups", kinds=[NotificationKind.BACKUP_FAILED, NotificationKind.BACKUP_STALE])
    channel("pager", min_severity="critical")
    channel("off", enabled=False)

    def routed(kind, severity):
        return _channels_of(notify(kind, title="t", body="b", severity=severity))

    assert routed(NotificationKind.PRA_FAILED, "info") == {"all"}
    assert routed(NotificationKind.PRA_FAILED, "warning") == {"all", "pra-warn"}
    assert routed(NotificationKind.PRA_FAILED, "CRITICAL") == {"all", "pra-warn", "pager"}
    assert routed(NotificationKind.BACKUP_STALE, "warning") == {"all", "backups"}


def test_an_escalation_level_adds_its_channels_once():
    everyone = channel("everyone")
    technical = channel("technical-oncall", kinds=[NotificationKind.DISK_SPACE])
    architects = channel("architects", kinds=[NotificationKind.DISK_SPACE])
    EscalationLevel.objects.get(level=2).channels.set([everyone, technical])
    EscalationLevel.objects.get(level=4).channels.set([architects])

    ids = notify(NotificationKind.INCIDENT_ESCALATED, title="t", body="b", escalation_level=2)
    assert _channels_of(ids) == {"everyone", "technical-oncall"}
    assert len(ids) == 2  # "everyone" matched twice, notified once
    assert set(Notification.objects.values_list("escalation_level", flat=True)) == {2}
    plain = notify(NotificationKind.INCIDENT_ESCALATED, title="t", body="b")
    assert _channels_of(plain) == {"everyone"}


def test_levels_l1_to_l4_are_seeded_with_a_ten_minute_delay():
    levels = list(EscalationLevel.objects.values_list("level", "name", "delay_minutes"))
    assert levels == [
        (1, "operator", 10),
        (2, "technical", 10),
        (3, "development", 10),
        (4, "architect", 10),
    ]


def test_no_channel_is_not_an_error(caplog):
    caplog.set_level(logging.INFO, logger="portal.notify")
    assert notify(NotificationKind.BACKUP_FAILED, title="nightly dump failed", body="") == []
    assert "no notification channel for BACKUP_FAILED" in caplog.text


def test_an_unknown_kind_or_severity_is_a_programming_error():
    with pytest.raises(ValueError):
        notify("NOT_A_KIND", title="t", body="b")
    with pytest.raises(ValueError):
        notify(NotificationKind.PRA_FAILED, title="t", body="b", severity="apocalyptic")


def test_rows_roll_back_with_the_caller_and_jobs_wait_for_commit(
    django_capture_on_commit_callbacks,
):
    channel("all")
    with pytest.raises(RuntimeError), transaction.atomic():
        notify(NotificationKind.PRA_FAILED, title="t", body="b")
        raise RuntimeError("the caller's change failed")
    assert not Notification.objects.exists()

    queue = django_rq.get_queue("default")
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        [pk] = notify(NotificationKind.PRA_FAILED, title="t", body="b")
        assert queue.count == 0
    assert len(callbacks) == 1
    assert queue.job_ids == [f"notify-{pk}"]


def test_the_send_job_retries_four_times_with_backoff(send):
    channel("all")
    [pk] = send()
    job = Job.fetch(f"notify-{pk}", connection=get_redis())
    assert job.func_name == "portal.jobs.send_notification"
    assert job.args == (pk,)
    assert job.origin == "default"
    assert job.retries_left == 4
    assert job.retry_intervals == [10, 30, 120, 600]


# --- sending ------------------------------------------------------------------------------


def test_a_webhook_gets_a_small_typed_json_document(send, receiver, settings):
    settings.PORTAL_BASE_URL = "https://ops.example.test"
    channel("hook", url=receiver.url("/portal-events"))
    [pk] = send(
        NotificationKind.PRA_FAILED,
        title="Remediation failed: restart_unbound on dns-1",
        body="Command failed on the target (exit code 1).",
        subject=("pra.praaction", "42"),
        severity="warning",
        url="/admin/pra/praaction/42/change/",
    )
    run_jobs("default")
    row = Notification.objects.get(pk=pk)
    assert row.status == NotificationStatus.SENT, row.last_error
    assert row.attempts == 1 and row.sent_at is not None
    path, headers, _ = receiver.requests[0]
    assert path == "/portal-events"
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == f"notify-{pk}"
    document = receiver.json()
    assert set(document) == {
        "id",
        "kind",
        "title",
        "body",
        "severity",
        "subject",
        "escalation_level",
        "url",
        "sent_at",
    }
    assert document["kind"] == "PRA_FAILED"
    assert document["severity"] == "warning"
    assert document["subject"] == {"type": "pra.praaction", "id": "42"}
    assert document["url"] == "https://ops.example.test/admin/pra/praaction/42/change/"
    assert document["title"] == "Remediation failed: restart_unbound on dns-1"


def test_slack_gets_readable_text_from_a_url_kept_in_the_environment(
    send, receiver, monkeypatch, settings
):
    settings.PORTAL_BASE_URL = "https://ops.example.test"
    monkeypatch.setenv("SLACK_OPS_URL", receiver.url("/services/" + SECRET_TOKEN))
    slack = channel("slack", ChannelKind.SLACK, url_env="SLACK_OPS_URL")
    assert slack.url == ""  # nothing secret in the database
    send(
        NotificationKind.INCIDENT_ESCALATED,
        title="Disk <95%> on db-1",
        body="Nobody acknowledged it in 10 minutes.",
        severity="critical",
        escalation_level=2,
        url="/admin/incidents/incident/7/change/",
    )
    run_jobs("default")
    assert receiver.requests[0][0] == "/services/" + SECRET_TOKEN
    text = receiver.json()["text"]
    assert receiver.json() == {"text": text}
    assert text.splitlines() == [
        "*[CRITICAL] Disk &lt;95%&gt; on db-1* (escalated to L2)",
        "Nobody acknowledged it in 10 minutes.",
        "<https://ops.example.test/admin/incidents/incident/7/change/|Open in the Ops Portal>",
    ]


def test_email_reaches_every_recipient_over_smtp(send, smtp_server):
    channel("mail", ChannelKind.EMAIL, recipients="oncall@ops.test, lead@ops.test")
    [pk] = send(
        NotificationKind.BACKUP_FAILED,
        title="Backup postgres-main failed",
        body="pg_dump exited 1.",
        severity="critical",
    )
    run_jobs("default")
    assert Notification.objects.get(pk=pk).status == NotificationStatus.SENT
    [envelope] = smtp_server.envelopes
    assert envelope.mail_from == "portal@ops.test"
    assert sorted(envelope.rcpt_tos) == ["lead@ops.test", "oncall@ops.test"]
    message = envelope.content.decode()
    assert "Subject: [CRITICAL] Backup postgres-main failed" in message
    assert "pg_dump exited 1." in message


def test_a_transient_failure_is_retried_then_sent(send, receiver, no_retry_delay):
    channel("hook", url=receiver.url())
    receiver.statuses = [503]
    [pk] = send()
    run_jobs("default")
    row = Notification.objects.get(pk=pk)
    assert row.status == NotificationStatus.SENT
    assert row.attempts == 2
    assert row.last_error == ""
    assert len(receiver.requests) == 2


def test_a_failing_receiver_ends_failed_audited_and_redacted(
    send, receiver, monkeypatch, no_retry_delay, caplog
):
    caplog.set_level(logging.DEBUG)
    secret_url = receiver.url(f"/services/{SECRET_TOKEN}?{SECRET_QUERY}")
    monkeypatch.setenv("SLACK_SECRET_URL", secret_url)
    channel("slack", ChannelKind.SLACK, url_env="SLACK_SECRET_URL")
    receiver.statuses = [500] * 10

    [pk] = send(severity="critical")  # the caller never sees the failure
    run_jobs("default")

    row = Notification.objects.get(pk=pk)
    assert len(receiver.requests) == 5  # the first attempt and four retries
    assert row.status == NotificationStatus.FAILED
    assert row.attempts == 5
    assert row.last_error.startswith("HTTP 500")
    assert "no hook at [redacted]" in row.last_error  # the receiver echoed the URL
    [event] = AuditEvent.objects.filter(event_type=AuditEventType.NOTIFICATION_FAILED)
    assert event.subject_type == "portal.notification" and event.subject_id == str(pk)
    assert event.details["attempts"] == 5 and event.details["channel"] == "slack"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FAILED after 5 attempts" in r.getMessage() for r in warnings)
    audit_text = json.dumps(event.details)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("xoxb-very-secret-token", "T0SECRET", "qq-secret-signature", secret_url):
        assert secret not in row.last_error
        assert secret not in audit_text
        assert secret not in logged


def test_a_sent_notification_is_never_sent_twice(send, receiver):
    channel("hook", url=receiver.url())
    [pk] = send()
    run_jobs("default")
    assert send_notification(pk) == "already sent"  # the job retried by hand
    assert notify_mod.enqueue(pk) is True  # or re-enqueued after a Redis flush
    run_jobs("default")
    assert len(receiver.requests) == 1
    assert Notification.objects.get(pk=pk).attempts == 1


def test_a_missing_environment_variable_is_a_recorded_attempt(send, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    channel("slack", ChannelKind.SLACK, url_env="NOT_SET_ANYWHERE")
    [pk] = send()
    with pytest.raises(DeliveryError, match="NOT_SET_ANYWHERE is not set"):
        send_notification(pk)
    row = Notification.objects.get(pk=pk)
    assert row.status == NotificationStatus.PENDING and row.attempts == 1
    assert "NOT_SET_ANYWHERE" in row.last_error


def test_an_unreachable_receiver_is_retried_with_a_clear_error(send):
    channel("hook", url=f"http://127.0.0.1:{_free_port()}/hook")
    [pk] = send()
    with pytest.raises(DeliveryError, match="ConnectionRefusedError"):
        send_notification(pk)
    assert "ConnectionRefusedError" in Notification.objects.get(pk=pk).last_error


def test_redaction_removes_the_url_and_its_parts():
    url = f"https://hooks.example.test/services/{SECRET_TOKEN}?{SECRET_QUERY}"
    text = f"failed for {url}; host hooks.example.test; path /services/{SECRET_TOKEN}"
    clean = redact(text, url)
    for part in (url, "hooks.example.test", "xoxb-very-secret-token", "qq-secret-signature"):
        assert part not in clean
    assert "[redacted]" in clean


# --- never lost silently -------------------------------------------------------------------


def test_stuck_pending_notifications_are_re_enqueued(send, receiver):
    channel("hook", url=receiver.url())
    [old, recent] = [send()[0], send()[0]]
    get_redis().flushdb()  # Redis lost every job
    Notification.objects.filter(pk=old).update(created=timezone.now() - timedelta(minutes=6))

    from portal.jobs import resend_stuck_notifications

    assert resend_stuck_notifications() == [old]
    assert resend_stuck_notifications() == []  # its job is queued now: not twice
    run_jobs("default")
    assert Notification.objects.get(pk=old).status == NotificationStatus.SENT
    assert Notification.objects.get(pk=recent).status == NotificationStatus.PENDING
    assert len(receiver.requests) == 1


def test_metrics_count_notifications_by_status(client, send, receiver):
    channel("hook", url=receiver.url())
    send()
    run_jobs("default")
    send()
    Notification.objects.filter(status=NotificationStatus.PENDING).update(
        status=NotificationStatus.FAILED
    )
    send()
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'portal_notifications{status="SENT"} 1.0' in text
    assert 'portal_notifications{status="FAILED"} 1.0' in text
    assert 'portal_notifications{status="PENDING"} 1.0' in text
    assert "portal_notifications_oldest_pending_seconds" in text


# --- remediation wiring ---------------------------------------------------------------------


@pytest.fixture
def pra_channel():
    return channel("ops")


def _pra_rows(action, kind):
    return Notification.objects.filter(
        kind=kind, subject_type="pra.praaction", subject_id=str(action.pk)
    )


def test_a_medium_proposal_asks_approvers(operator, pra_channel):
    action = propose(operator, offline_host(), "restart_container", {"name": "web-1"})
    [row] = _pra_rows(action, NotificationKind.PRA_AWAITING_APPROVAL)
    assert row.title == "Approval needed: restart_container web-1 on dns-1"
    assert row.link == f"/admin/pra/praaction/{action.pk}/change/"
    assert row.severity == "info"
    assert action.rationale in row.body


def test_an_auto_approved_proposal_asks_nobody(operator, pra_channel):
    action = propose(operator, offline_host(), "restart_unbound", auto_approve=True)
    actions.record_preflight(action.pk, ok=True, output="DRY-RUN OK")
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED
    assert not _pra_rows(action, NotificationKind.PRA_AWAITING_APPROVAL).exists()


def test_a_refused_auto_approval_asks_approvers(operator, pra_channel):
    ApprovalRule.objects.filter(impact="LOW").update(allow_auto_approve=False)
    action = propose(operator, offline_host(), "restart_unbound", auto_approve=True)
    assert not _pra_rows(action, NotificationKind.PRA_AWAITING_APPROVAL).exists()
    actions.record_preflight(action.pk, ok=True, output="DRY-RUN OK")
    [row] = _pra_rows(action, NotificationKind.PRA_AWAITING_APPROVAL)
    assert "policy refused automatic approval" in row.body


def test_a_failed_execution_and_a_failed_verification_are_notified(operator, pra_channel):
    action = propose(operator, offline_host(), "restart_unbound")
    PRAAction.objects.filter(pk=action.pk).update(
        status=ActionStatus.EXECUTING, started_at=timezone.now()
    )
    actions.finish_execution(action.pk, cause=FailureCause.WORKER_LOST, detail="no heartbeat")
    [failed] = _pra_rows(action, NotificationKind.PRA_FAILED)
    assert failed.severity == "critical"
    assert "Worker lost" in failed.body

    other = propose(operator, action.host, "restart_unbound")
    PRAAction.objects.filter(pk=other.pk).update(status=ActionStatus.EXECUTING)
    actions.finish_execution(other.pk, cause=FailureCause.COMMAND_ERROR, detail="exit 1")
    assert _pra_rows(other, NotificationKind.PRA_FAILED).get().severity == "warning"

    actions.record_verification(action.pk, verified=False, output="unbound: inactive")
    [unverified] = _pra_rows(action, NotificationKind.PRA_NOT_VERIFIED)
    assert unverified.severity == "critical"
    assert "unbound: inactive" in unverified.body


# --- admin and validation --------------------------------------------------------------------

CHANNELS = "/admin/portal/notificationchannel/"


def test_a_viewer_sees_channels_but_cannot_change_them(client, viewer):
    hook = channel("hook")
    client.force_login(viewer)
    assert client.get(CHANNELS).status_code == 200
    assert client.get(f"{CHANNELS}add/").status_code == 403
    response = client.post(f"{CHANNELS}{hook.pk}/change/", {"name": "hijacked", "kind": "EMAIL"})
    assert response.status_code == 403
    assert client.post("/admin/portal/escalationlevel/1/change/", {}).status_code == 403
    hook.refresh_from_db()
    assert hook.name == "hook"


def test_an_admin_adds_a_slack_channel_by_variable_name(client, admin_user):
    client.force_login(admin_user)
    form = {
        "name": "slack-ops",
        "kind": "SLACK",
        "url": "",
        "url_env": "SLACK_OPS_URL",
        "recipients": "",
        "kinds": ["PRA_FAILED", "INCIDENT_ESCALATED"],
        "min_severity": "warning",
        "enabled": "on",
    }
    assert client.post(f"{CHANNELS}add/", form).status_code == 302
    created = NotificationChannel.objects.get(name="slack-ops")
    assert created.kinds == ["PRA_FAILED", "INCIDENT_ESCALATED"]
    event = AuditEvent.objects.get(event_type=AuditEventType.NOTIFICATION_CONFIG_CHANGED)
    assert event.details["url_env"] == "SLACK_OPS_URL"

    clear = {**form, "name": "slack-clear", "url": "https://hooks.slack.com/services/T/B/x"}
    clear["url_env"] = ""
    page = client.post(f"{CHANNELS}add/", clear)
    assert page.status_code == 200
    assert "A Slack webhook URL is a secret" in page.content.decode()
    assert not NotificationChannel.objects.filter(name="slack-clear").exists()


def test_the_admin_sends_a_test_and_retries_failed_ones(client, admin_user, viewer):
    hook = channel("hook")
    client.force_login(admin_user)
    client.post(CHANNELS, {"action": "send_test_notification", "_selected_action": [hook.pk]})
    row = Notification.objects.get(channel=hook, kind=NotificationKind.TEST)
    assert AuditEvent.objects.filter(event_type=AuditEventType.NOTIFICATION_TEST).count() == 1

    Notification.objects.filter(pk=row.pk).update(status=NotificationStatus.FAILED, attempts=5)
    changelist = "/admin/portal/notification/"
    retry = {"action": "retry", "_selected_action": [row.pk]}
    client.force_login(viewer)
    assert client.get(changelist).status_code == 200
    client.post(changelist, retry)
    row.refresh_from_db()
    assert row.status == NotificationStatus.FAILED  # not the viewer's to retry
    client.force_login(admin_user)
    client.post(changelist, retry)
    row.refresh_from_db()
    assert row.status == NotificationStatus.PENDING and row.attempts == 0
    assert AuditEvent.objects.filter(event_type=AuditEventType.NOTIFICATION_RETRIED).count() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "SLACK", "url": "https://hooks.slack.com/services/T/B/x"}, "url"),
        ({"kind": "WEBHOOK", "url": "https://h.test/x", "url_env": "HOOK_URL"}, "url_env"),
        ({"kind": "WEBHOOK"}, "url_env"),
        ({"kind": "WEBHOOK", "url": "https://h.test/x?token=abcdef"}, "url"),
        ({"kind": "WEBHOOK", "url_env": "lower-case"}, "url_env"),
        ({"kind": "EMAIL"}, "recipients"),
        ({"kind": "EMAIL", "recipients": "ops@ops.test, not-an-address"}, "recipients"),
        ({"kind": "EMAIL", "recipients": "a@ops.test", "url_env": "X_URL"}, "url"),
        ({"kind": "WEBHOOK", "url_env": "HOOK_URL", "kinds": ["NOPE"]}, "kinds"),
    ],
)
def test_bad_channel_configuration_is_refused(fields, field):
    with pytest.raises(ValidationError) as error:
        NotificationChannel(name="bad", **fields).full_clean()
    assert field in error.value.message_dict
