"""Maintenance windows and change freezes (issue 14 §1), end to end: real PostgreSQL and
Redis, the real loopback sshd with the rendered wrappers, real RQ workers (pra and
backups queues), real redis-server backup sources. Time is controlled by passing ``now``
into the sweep (``release_waiting``), as the other sweeps are tested: no sleeps.

Windows are placed relative to the real clock (their first opening an hour from now),
so an approval given now waits, and a run released "at the opening" starts at once.
"""

import json
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from backups.choices import RunStatus, SourceKind, Verification
from backups.models import BackupRun
from portal import approvals
from portal.lib.localservices import free_port
from portal.models import AuditEvent
from portal.tokens import create_token
from pra import actions, windows
from pra.catalog import CATALOG
from pra.choices import ActionStatus
from pra.models import ChangeFreeze, MaintenanceWindow, PRAAction, WindowOpening
from tests.conftest import TEST_PASSWORD
from tests.factories import make_source
from tests.jobs import run_jobs
from tests.pra.factories import RATIONALE, offline_host, propose
from tests.pra.helpers import restarts
from tests.services import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)

EMERGENCY = "the certificate expired an hour ago and every client is refused right now"


def _trail(obj) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type=obj._meta.label_lower, subject_id=str(obj.pk))
        .order_by("id")
        .values_list("event_type", flat=True)
    )


def _needs_window(monkeypatch, name: str) -> None:
    """The catalog entry ``name`` requires a window (as a catalog author would set it)."""
    monkeypatch.setitem(CATALOG, name, replace(CATALOG[name], requires_window=True))


def _next_hour() -> datetime:
    return (timezone.now() + timedelta(hours=1)).replace(second=0, microsecond=0)


def _weekly(by, opens: datetime, *, name: str = "sunday-night", minutes: int = 120, **fields):
    return windows.save_window(
        None,
        by=by,
        name=name,
        weekday=opens.weekday(),
        start_time=opens.time(),
        duration_minutes=minutes,
        timezone="UTC",
        **fields,
    )


def _run_backups() -> None:
    run_jobs("backups")


# --- the calendar ------------------------------------------------------------------------


def test_a_weekly_window_is_read_in_its_own_time_zone_and_matches_its_cron_twin():
    paris = MaintenanceWindow(name="paris", weekday=6, start_time=time(2, 0),
                              duration_minutes=120, timezone="Europe/Paris")  # fmt: skip
    since = datetime(2026, 3, 20, tzinfo=UTC)  # Paris moves to summer time on Sun 29 March
    found = list(windows.openings(paris, since, since + timedelta(days=21)))
    assert [o.opens_at for o in found] == [
        datetime(2026, 3, 22, 1, 0, tzinfo=UTC),  # 02:00 CET
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 02:00 does not exist that night: 03:00 CEST
        datetime(2026, 4, 5, 0, 0, tzinfo=UTC),  # 02:00 CEST
    ]
    assert found[0].closes_at - found[0].opens_at == timedelta(hours=2)
    assert found[0].label == "Sun 02:00 CET (2026-03-22)"

    utc = MaintenanceWindow(name="utc", weekday=6, start_time=time(2, 0), duration_minutes=120)
    cron = MaintenanceWindow(name="cron", cron="0 2 * * 0", duration_minutes=120)
    assert [o.opens_at for o in windows.openings(utc, since, since + timedelta(days=30))] == [
        o.opens_at for o in windows.openings(cron, since, since + timedelta(days=30))
    ]
    inside = datetime(2026, 3, 22, 3, 59, tzinfo=UTC)
    assert windows.next_opening(utc, inside).is_open(inside)
    assert windows.next_opening(utc, inside + timedelta(minutes=1)).opens_at == datetime(
        2026, 3, 29, 2, 0, tzinfo=UTC
    )


# --- audited edits --------------------------------------------------------------------------


def test_windows_and_freezes_are_edited_by_admins_only_one_audit_event_per_change(
    admin_user, operator, approver
):
    opens = _next_hour()
    window = _weekly(admin_user, opens)
    assert _trail(window) == ["WINDOW_CREATED"]
    windows.save_window(window, by=admin_user, duration_minutes=90)
    windows.save_window(window, by=admin_user, duration_minutes=90)  # nothing changed
    assert _trail(window) == ["WINDOW_CREATED", "WINDOW_UPDATED"]
    changed = AuditEvent.objects.filter(event_type="WINDOW_UPDATED").get()
    assert changed.details["changes"] == {"duration_minutes": 90}
    assert changed.actor == admin_user.get_username()

    for who in (operator, approver):
        with pytest.raises(windows.WindowError, match="not allowed to edit maintenance windows"):
            windows.save_window(window, by=who, duration_minutes=30)
        with pytest.raises(windows.WindowError, match="not allowed to edit maintenance windows"):
            windows.save_freeze(None, by=who, reason="not mine to set",
                                starts_at=opens, ends_at=opens + timedelta(hours=1))  # fmt: skip
    window.refresh_from_db()
    assert window.duration_minutes == 90 and not ChangeFreeze.objects.exists()

    bad = [
        ({"cron": "0 2 * * 0"}, "either a cron expression or a weekday"),  # both kinds
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"duration_minutes": 0}, "duration_minutes"),
        ({"host_tag": "a,b"}, "one host tag"),
    ]
    for change, message in bad:
        with pytest.raises(windows.WindowError, match=message):
            windows.save_window(window, by=admin_user, **change)
    with pytest.raises(windows.WindowError, match="not a valid cron"):
        windows.save_window(None, by=admin_user, name="broken", cron="every sunday",
                            duration_minutes=60)  # fmt: skip
    assert _trail(window) == ["WINDOW_CREATED", "WINDOW_UPDATED"]
    assert MaintenanceWindow.objects.count() == 1

    freeze = windows.save_freeze(None, by=admin_user, reason="year-end change freeze",
                                 starts_at=opens, ends_at=opens + timedelta(days=2))  # fmt: skip
    windows.save_freeze(freeze, by=admin_user, ends_at=opens + timedelta(days=3))
    with pytest.raises(windows.WindowError, match="end after it starts"):
        windows.save_freeze(freeze, by=admin_user, ends_at=opens - timedelta(days=1))
    windows.delete_freeze(freeze, by=admin_user)
    windows.delete_window(window, by=admin_user)
    assert _trail(freeze) == ["FREEZE_CREATED", "FREEZE_UPDATED", "FREEZE_DELETED"]
    assert _trail(window) == ["WINDOW_CREATED", "WINDOW_UPDATED", "WINDOW_DELETED"]


# --- window gating ----------------------------------------------------------------------------


def test_a_window_action_waits_runs_inside_its_window_and_expires_after_it(
    monkeypatch, operator, approver, admin_user, target_host, shared_ssh_target
):
    _needs_window(monkeypatch, "restart_caddy")
    opens = _next_hour()
    window = _weekly(admin_user, opens)
    closes = opens + timedelta(hours=2)
    proposal = actions.submit_proposal(action="restart_caddy", host=target_host, params={},
                                       rationale=RATIONALE, by=operator)  # fmt: skip
    assert "runs only in a maintenance window" in proposal.message
    action = proposal.action
    run_jobs()  # its pre-flight
    actions.approve_action(action, by=approver)
    action.refresh_from_db()
    label = f"{opens:%a %H:%M} UTC ({opens:%Y-%m-%d})"
    assert action.status == ActionStatus.WAITING
    assert action.hold_reason == f"approved for the window starting {label}"
    assert (action.window, action.window_opens_at, action.expires_at) == (window, opens, None)
    with pytest.raises(actions.ActionError, match="it runs by itself when the window opens"):
        actions.request_execution(action, by=operator)
    run_jobs()
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 0

    assert actions.release_waiting(now=opens - timedelta(seconds=1)) == {"opened": []}
    action.refresh_from_db()
    assert action.status == ActionStatus.WAITING

    at = opens + timedelta(seconds=5)
    assert actions.release_waiting(now=at) == {"opened": [], "released": [action.pk]}
    action.refresh_from_db()
    assert action.status == ActionStatus.APPROVED
    # The 5-minute validity starts at the opening, not at the approval an hour earlier.
    validity = approvals.rule_for(action.impact).validity_seconds
    assert action.expires_at == at + timedelta(seconds=validity)
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.COMPLETED, action.failure_detail
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1
    trail = _trail(action)
    assert trail[trail.index("PRA_APPROVED"):] == [
        "PRA_APPROVED", "PRA_RELEASED", "PRA_EXECUTING", "PRA_EXECUTED", "PRA_VERIFIED",
    ]  # fmt: skip

    late = propose(operator, target_host, "restart_caddy")
    run_jobs()
    actions.approve_action(late, by=approver)
    late.refresh_from_db()
    assert late.status == ActionStatus.WAITING and late.window_opens_at == opens
    outcome = actions.release_waiting(now=closes)
    assert outcome["expired"] == [late.pk]
    late.refresh_from_db()
    assert late.status == ActionStatus.EXPIRED
    assert late.hold_reason.startswith(f"expired: window sunday-night starting {label} closed")
    expired = AuditEvent.objects.get(event_type="PRA_EXPIRED", subject_id=str(late.pk))
    assert expired.details["cause"] == "window_passed"
    run_jobs()
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1


def test_an_impact_level_can_require_a_window_and_no_window_soon_refuses_the_approval(
    settings, operator, approver, approver2, admin_user
):
    settings.PRA_WINDOW_IMPACTS = ("HIGH",)
    host = offline_host()
    action = propose(operator, host, "reboot_system")
    actions.approve_action(action, by=approver, confirmation="dns-1")
    with pytest.raises(actions.ActionError, match="no window for this host opens in the next 15"):
        actions.approve_action(action, by=approver2, confirmation="dns-1")
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED
    assert approvals.tally(action).count == 1  # the refused signature was not kept

    # A window for other hosts does not count; one for this host's tag does.
    opens = _next_hour()
    _weekly(admin_user, opens, name="storage-only", host_tag="storage")
    with pytest.raises(actions.ActionError, match="no window for this host"):
        actions.approve_action(action, by=approver2, confirmation="dns-1")
    actions.update_host(host, by=admin_user, tags="storage")
    actions.approve_action(action, by=approver2, confirmation="dns-1")
    action.refresh_from_db()
    assert action.status == ActionStatus.WAITING and action.window.name == "storage-only"


def test_a_deleted_window_voids_what_waited_for_it(monkeypatch, operator, approver, admin_user):
    _needs_window(monkeypatch, "restart_caddy")
    window = _weekly(admin_user, _next_hour())
    action = propose(operator, offline_host(), "restart_caddy")
    actions.approve_action(action, by=approver)
    moved = propose(operator, offline_host("dns-2"), "restart_caddy")
    actions.approve_action(moved, by=approver)
    actions.update_host(moved.host, by=admin_user, address="192.0.2.99")
    moved.refresh_from_db()
    assert moved.status == ActionStatus.VOIDED  # at once, not at the opening
    assert moved.void_reason.startswith("approval voided: host dns-2")
    windows.delete_window(window, by=admin_user)
    assert actions.release_waiting()["voided"] == [action.pk]
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert "was deleted or disabled" in action.void_reason


# --- freeze and emergency -------------------------------------------------------------------


def test_during_a_freeze_only_emergencies_run_with_a_reason_and_one_more_signature(
    monkeypatch, operator, approver, approver2, admin_user, target_host, shared_ssh_target
):
    now = timezone.now()
    windows.save_freeze(None, by=admin_user, reason="year-end change freeze",
                        starts_at=now - timedelta(minutes=1),
                        ends_at=now + timedelta(hours=6))  # fmt: skip
    ordinary = propose(operator, target_host, "restart_caddy")
    run_jobs()
    with pytest.raises(actions.ActionError, match="change freeze until .* only emergency"):
        actions.approve_action(ordinary, by=approver)
    ordinary.refresh_from_db()
    assert ordinary.status == ActionStatus.PROPOSED

    # It also requires a window, and there is none: an emergency is held by neither.
    _needs_window(monkeypatch, "restart_container")
    shared_ssh_target.add_container("web-1", "exited")
    count = PRAAction.objects.count()
    for reason in ("", "urgent!!", "fix fix fix fix fix fix fix fix fix"):
        with pytest.raises(actions.ActionError, match="An emergency needs a typed reason"):
            propose(operator, target_host, "restart_container", {"name": "web-1"},
                    emergency=True, emergency_reason=reason)  # fmt: skip
    with pytest.raises(actions.ActionError, match="never auto-approved"):
        propose(operator, target_host, "restart_container", {"name": "web-1"},
                emergency=True, emergency_reason=EMERGENCY, auto_approve=True)  # fmt: skip
    assert PRAAction.objects.count() == count

    proposal = actions.submit_proposal(
        action="restart_container", host=target_host, params={"name": "web-1"},
        rationale=RATIONALE, by=operator, emergency=True, emergency_reason=EMERGENCY,
    )  # fmt: skip
    assert "EMERGENCY" in proposal.message and "2 signature(s)" in proposal.message
    emergency = proposal.action
    run_jobs()
    first = actions.approve_action(emergency, by=approver)
    assert (first.count, first.required, first.complete) == (1, 2, False)  # MEDIUM needs 1
    run_jobs()
    emergency.refresh_from_db()
    assert emergency.status == ActionStatus.PROPOSED
    assert shared_ssh_target.calls().count(["podman", "restart", "web-1"]) == 0
    actions.approve_action(emergency, by=approver2)
    run_jobs()
    emergency.refresh_from_db()
    assert emergency.status == ActionStatus.COMPLETED, emergency.failure_detail
    assert shared_ssh_target.calls().count(["podman", "restart", "web-1"]) == 1
    proposed = AuditEvent.objects.get(event_type="PRA_PROPOSED", subject_id=str(emergency.pk))
    assert proposed.details["emergency"] == EMERGENCY


def test_a_freeze_that_starts_after_the_approval_stops_the_run(
    operator, approver, admin_user, target_host, shared_ssh_target
):
    action = propose(operator, target_host, "restart_caddy")
    run_jobs()
    actions.approve_action(action, by=approver)  # enqueued; the worker has not run yet
    now = timezone.now()
    windows.save_freeze(None, by=admin_user, reason="incident review freeze",
                        starts_at=now - timedelta(seconds=1),
                        ends_at=now + timedelta(hours=1))  # fmt: skip
    run_jobs()
    action.refresh_from_db()
    assert action.status == ActionStatus.VOIDED
    assert "change freeze" in action.void_reason and "only emergencies run" in action.void_reason
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 0


def test_a_window_inside_a_freeze_is_skipped_for_the_next_one(
    monkeypatch, operator, approver, admin_user
):
    _needs_window(monkeypatch, "restart_caddy")
    opens = _next_hour()
    _weekly(admin_user, opens)
    windows.save_freeze(None, by=admin_user, reason="release week freeze",
                        starts_at=opens - timedelta(minutes=30),
                        ends_at=opens + timedelta(days=1))  # fmt: skip
    action = propose(operator, offline_host(), "restart_caddy")
    actions.approve_action(action, by=approver)
    action.refresh_from_db()
    assert action.status == ActionStatus.WAITING
    assert action.window_opens_at == opens + timedelta(days=7)
    # An approver may still cancel it before its window.
    actions.reject_action(action, by=approver, reason="the release was postponed")
    action.refresh_from_db()
    assert action.status == ActionStatus.REJECTED
    assert actions.release_waiting(now=opens + timedelta(days=7, seconds=1)) == {"opened": []}


# --- the pre-maintenance backup gate -----------------------------------------------------------


@pytest.fixture
def backup_storage(settings, tmp_path):
    settings.BACKUP_STORAGE_DIR = tmp_path / "storage"
    settings.BACKUP_SECRETS_DIR = tmp_path
    settings.BACKUP_DISK_WATCH_PATHS = [str(tmp_path / "storage")]
    return settings


def test_a_window_takes_a_verified_backup_first_and_refuses_when_it_fails(
    monkeypatch, backup_storage, tmp_path, operator, approver, admin_user, target_host,
    shared_ssh_target,
):  # fmt: skip
    _needs_window(monkeypatch, "restart_caddy")
    live = RedisServer(tmp_path / "redis")
    try:
        live.client().set("session:1", "kept")
        cache = make_source("cache", SourceKind.REDIS, dsn=live.url)
        opens = _next_hour()
        window = _weekly(admin_user, opens, backup_sources=[cache])
        action = propose(operator, target_host, "restart_caddy")
        run_jobs()
        actions.approve_action(action, by=approver)

        at = opens + timedelta(seconds=2)
        outcome = actions.release_waiting(now=at)
        opening = WindowOpening.objects.get(window=window, opens_at=opens)
        assert outcome == {"opened": [opening.pk], "waiting": [action.pk]}
        assert actions.release_waiting(now=at)["opened"] == []  # once per opening
        run = BackupRun.objects.get()
        assert list(opening.backup_runs.all()) == [run] and run.requested_by.startswith("system:")
        action.refresh_from_db()
        assert action.status == ActionStatus.WAITING
        assert f"waiting for the pre-maintenance backup of cache (run #{run.pk}" in (
            action.hold_reason
        )
        run_jobs()
        assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 0

        _run_backups()
        run.refresh_from_db()
        assert (run.status, run.verification) == (RunStatus.SUCCEEDED, Verification.VERIFIED)
        assert actions.release_waiting(now=at + timedelta(minutes=1))["released"] == [action.pk]
        run_jobs()
        action.refresh_from_db()
        assert action.status == ActionStatus.COMPLETED, action.failure_detail
        assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1
    finally:
        live.stop()

    # The source is gone next week: the backup fails, and the action is refused.
    windows.save_window(window, by=admin_user, enabled=False)
    gone = make_source("gone", SourceKind.REDIS, dsn=f"redis://127.0.0.1:{free_port()}")
    later = _weekly(admin_user, opens, name="sunday-night-2", backup_sources=[gone])
    second = propose(operator, target_host, "restart_caddy")
    run_jobs()
    actions.approve_action(second, by=approver)
    actions.release_waiting(now=at)
    failed = WindowOpening.objects.get(window=later).backup_runs.get()
    _run_backups()
    failed.refresh_from_db()
    assert failed.status == RunStatus.FAILED
    assert actions.release_waiting(now=at + timedelta(minutes=1))["voided"] == [second.pk]
    second.refresh_from_db()
    assert second.status == ActionStatus.VOIDED
    assert second.void_reason.startswith(
        f"refused: the pre-maintenance backup of gone (run #{failed.pk}) failed"
    )
    voided = AuditEvent.objects.get(event_type="PRA_VOIDED", subject_id=str(second.pk))
    assert voided.details["cause"] == "backup_failed"
    run_jobs()
    assert restarts(shared_ssh_target, "systemctl", "restart", "caddy") == 1


# --- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_shows_the_next_window_the_freeze_and_what_waits(
    monkeypatch, viewer, operator, approver, admin_user
):
    _needs_window(monkeypatch, "restart_caddy")
    opens = _next_hour()
    _weekly(admin_user, opens)
    now = timezone.now()
    windows.save_freeze(None, by=admin_user, reason="quarter close freeze",
                        starts_at=now - timedelta(minutes=5),
                        ends_at=now + timedelta(minutes=30))  # fmt: skip
    action = propose(operator, offline_host(), "restart_caddy")
    actions.approve_action(action, by=approver)
    client = Client()
    assert client.login(username=viewer.get_username(), password=TEST_PASSWORD)
    page = client.get("/").content.decode()
    assert 'id="panel-maintenance"' in page
    assert f"next: {opens:%a %H:%M} UTC ({opens:%Y-%m-%d})" in page
    assert "Freeze: quarter close freeze. Only emergency actions run" in page
    assert f"approved for the window starting {opens:%a %H:%M} UTC" in page
    detail = client.get(f"/admin/pra/praaction/{action.pk}/change/").content.decode()
    assert 'id="pra-hold-reason"' in detail
    assert f"Waiting:</strong> approved for the window starting {opens:%a %H:%M} UTC" in detail


# --- what the API and MCP answers say -----------------------------------------------------------


def test_proposal_answers_say_when_an_action_will_wait_or_is_blocked_by_a_freeze(
    client, monkeypatch, operator, admin_user
):
    """The REST API's and the MCP tools' proposal results share ``action_out``."""
    _needs_window(monkeypatch, "restart_caddy")
    host = offline_host()
    opens = _next_hour()
    _weekly(admin_user, opens)
    _, raw = create_token(operator, "tests")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    def post(body):
        return client.post("/api/pra/actions", data=json.dumps(body),
                           content_type="application/json", **auth)  # fmt: skip

    body = {"action": "restart_caddy", "host": host.name, "params": {}, "rationale": RATIONALE}
    waits = post(body).json()
    assert waits["maintenance"]["requires_window"] is True
    assert waits["maintenance"]["on_approval"] == (
        f"waits: once approved it is approved for the window starting {opens:%a %H:%M} UTC "
        f"({opens:%Y-%m-%d})"
    )
    assert "runs only in a maintenance window" in waits["message"]

    now = timezone.now()
    windows.save_freeze(None, by=admin_user, reason="quarter close freeze",
                        starts_at=now - timedelta(minutes=1),
                        ends_at=now + timedelta(minutes=30))  # fmt: skip
    blocked = post({**body, "action": "reload_caddy"}).json()
    assert blocked["maintenance"]["freeze"]["reason"] == "quarter close freeze"
    assert blocked["maintenance"]["on_approval"].startswith("approval is refused now: A change")
    assert "cannot be approved now" in blocked["message"]

    refused = post({**body, "action": "restart_unbound", "emergency": True})
    assert refused.status_code == 400 and "typed reason" in refused.json()["message"]
    emergency = post({**body, "action": "restart_unbound", "emergency": True,
                      "emergency_reason": EMERGENCY})  # fmt: skip
    assert emergency.status_code == 201
    out = emergency.json()
    assert (out["emergency"], out["approvals_required"]) == (True, 2)  # LOW needs 1
    assert out["maintenance"]["on_approval"] == "runs as soon as it is approved"
