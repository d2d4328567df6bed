"""Overwriting restores: refused without the typed confirmation or two approvals, and
a verified safety backup of the target is taken before anything is overwritten.
Scratch restores (nothing overwritten) still need one approver other than the requester."""

from datetime import timedelta

import pytest

from backups import actions
from backups.choices import RestoreMode, RestoreStatus, RunStatus, Trigger, Verification
from backups.jobs import run_restore
from backups.models import BackupRun, RestoreRequest
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import backup_now, dump_of, pg_source, plan_now, run_jobs, trail
from tests.backups.restoring import approve_and_run, pg_target

pytestmark = pytest.mark.django_db


@pytest.fixture
def damaged_db(pg_cluster, pg_database, operator, capture):
    """A verified backup of a database, then a change to the database that we regret."""
    name = pg_database("prod")
    good = pg_snapshot(pg_cluster, name)
    run = backup_now(pg_source("prod-db", pg_cluster.dsn, name), operator, capture)
    assert run.verification == Verification.VERIFIED
    with pg_cluster.connect(name) as conn:
        conn.execute("DELETE FROM orders WHERE id > 100; UPDATE customers SET name = 'oops'")
    return name, good, pg_snapshot(pg_cluster, name), dump_of(run)


def test_overwrite_needs_the_typed_target_name(damaged_db, operator):
    name, _, _, artifact = damaged_db
    _, plan = actions.plan_restore(artifact, by=operator, dry_run=True)
    assert plan["mode"] == RestoreMode.OVERWRITE
    assert name in plan["overwrites"] and plan["target_name"] == name
    with pytest.raises(actions.BackupError) as refused:
        actions.plan_restore(artifact, by=operator, confirmation="yes")
    assert refused.value.code == "confirmation"
    assert RestoreRequest.objects.count() == 0


def test_viewers_cannot_plan_and_dry_run_changes_nothing(damaged_db, viewer, operator):
    *_, artifact = damaged_db
    with pytest.raises(actions.BackupError):
        actions.plan_restore(artifact, by=viewer, dry_run=True)
    req, plan = actions.plan_restore(artifact, by=operator, dry_run=True)
    assert req is None and plan["steps"][1].startswith("safety backup")
    assert RestoreRequest.objects.count() == 0


def test_restore_is_refused_until_two_other_people_approve(
    damaged_db, pg_cluster, operator, approver, approver2, capture
):
    name, good, damaged, artifact = damaged_db
    req, _ = plan_now(capture, artifact, by=operator, confirmation=name)
    assert req.status == RestoreStatus.PLANNED

    # The job cannot run what people did not approve.
    assert run_restore(req.pk) == "not-claimed"
    with pytest.raises(actions.BackupError) as own:
        actions.approve_restore(req, by=operator, confirmation=name)
    assert own.value.code in {"permission", "self_approval"}
    with pytest.raises(actions.BackupError) as untyped:
        actions.approve_restore(req, by=approver, confirmation="")
    assert untyped.value.code == "confirmation"

    tally = actions.approve_restore(req, by=approver, confirmation=name)
    assert (tally.count, tally.complete) == (1, False)
    with pytest.raises(actions.BackupError) as twice:
        actions.approve_restore(req, by=approver, confirmation=name)
    assert twice.value.code == "already_signed"
    assert run_restore(req.pk) == "not-claimed"
    assert pg_snapshot(pg_cluster, name) == damaged  # nothing happened yet

    with capture(execute=True):
        tally = actions.approve_restore(req, by=approver2, confirmation=name)
    assert tally.complete
    run_jobs()
    req.refresh_from_db()
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert pg_snapshot(pg_cluster, name) == good
    assert trail(req) == [
        "RESTORE_PLANNED", "APPROVAL_SIGNED", "APPROVAL_SIGNED", "RESTORE_APPROVED",
        "RESTORE_STARTED", "SAFETY_BACKUP", "RESTORE_SUCCEEDED",
    ]  # fmt: skip


def test_a_safety_backup_of_the_target_exists_before_the_overwrite(
    damaged_db, pg_cluster, operator, approver, approver2, capture
):
    name, good, damaged, artifact = damaged_db
    req, _ = plan_now(capture, artifact, by=operator, confirmation=name)
    actions.approve_restore(req, by=approver, confirmation=name)
    with capture(execute=True):
        actions.approve_restore(req, by=approver2, confirmation=name)
    run_jobs()
    req.refresh_from_db()
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    safety = BackupRun.objects.get(pk=req.safety_run_id)
    assert safety.trigger == Trigger.SAFETY and safety.restore_id == req.pk
    assert safety.status == RunStatus.SUCCEEDED and safety.verification == Verification.VERIFIED
    assert safety.finished_at <= req.finished_at and safety.started_at >= req.started_at
    assert req.report["safety_run"] == safety.pk

    # The safety backup holds the target as it was just before: restore it to a scratch db.
    scratch = f"{name}_before"
    try:
        back, _ = plan_now(capture, dump_of(safety), target={"database": scratch}, by=operator)
        back = approve_and_run(capture, back, approver)
        assert back.status == RestoreStatus.SUCCEEDED, back.error
        assert pg_snapshot(pg_cluster, scratch) == damaged
    finally:
        pg_cluster.drop(scratch)
    assert pg_snapshot(pg_cluster, name) == good


def test_a_failed_safety_backup_stops_the_restore_before_any_change(
    damaged_db, pg_cluster, operator, approver, approver2, admin_user, capture, monkeypatch
):
    name, _, damaged, artifact = damaged_db
    monkeypatch.setenv("TEST_PG_RESTORE_PASSWORD", "unused-under-trust")
    pg_target(admin_user, pg_cluster, name="prod-pg", password_env="TEST_PG_RESTORE_PASSWORD")
    req, plan = plan_now(capture, artifact, target={"target": "prod-pg"}, by=operator,
                         confirmation=name)  # fmt: skip
    assert plan["mode"] == RestoreMode.OVERWRITE and req.restore_target.name == "prod-pg"
    # The target's credentials vanish before the worker runs: no safety backup can be taken.
    monkeypatch.delenv("TEST_PG_RESTORE_PASSWORD")
    req = approve_and_run(capture, req, approver, approver2, confirmation=name)
    assert req.status == RestoreStatus.FAILED
    assert "nothing was changed" in req.error and "TEST_PG_RESTORE_PASSWORD" in req.error
    assert pg_snapshot(pg_cluster, name) == damaged


def test_a_scratch_restore_needs_one_approver_other_than_the_requester(
    damaged_db, pg_cluster, operator, operator2, approver, capture
):
    name, good, damaged, artifact = damaged_db
    scratch = f"{name}_drill"
    req, plan = plan_now(capture, artifact, target={"database": scratch}, by=operator)
    assert plan["mode"] == RestoreMode.SCRATCH and plan["steps"][0].startswith("one approval")
    assert req.status == RestoreStatus.PLANNED and req.approval_impact == "MEDIUM"
    assert run_restore(req.pk) == "not-claimed"  # nobody approved it yet
    with pytest.raises(actions.BackupError) as own:
        actions.approve_restore(req, by=operator)
    assert own.value.code in {"permission", "self_approval"}
    with pytest.raises(actions.BackupError) as not_an_approver:
        actions.approve_restore(req, by=operator2)
    assert not_an_approver.value.code == "permission"
    with pg_cluster.connect("postgres") as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [scratch]
        ).fetchone()
    try:
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == good
    finally:
        pg_cluster.drop(scratch)
    assert pg_snapshot(pg_cluster, name) == damaged
    assert trail(req) == [
        "RESTORE_PLANNED", "APPROVAL_SIGNED", "RESTORE_APPROVED", "RESTORE_STARTED",
        "RESTORE_SUCCEEDED",
    ]  # fmt: skip


def test_rejection_ends_the_request(damaged_db, operator, approver, capture):
    name, *_, artifact = damaged_db
    req, _ = plan_now(capture, artifact, by=operator, confirmation=name)
    with pytest.raises(actions.BackupError):
        actions.reject_restore(req, by=approver, reason="no")
    actions.reject_restore(req, by=approver, reason="wrong backup, use last night's")
    req.refresh_from_db()
    assert req.status == RestoreStatus.REJECTED
    with pytest.raises(actions.BackupError) as late:
        actions.approve_restore(req, by=approver, confirmation=name)
    assert late.value.code == "state"


def test_an_approval_not_used_in_time_expires_and_never_runs(
    damaged_db, pg_cluster, operator, approver, approver2
):
    name, _, damaged, artifact = damaged_db
    req, _ = actions.plan_restore(artifact, by=operator, confirmation=name)
    actions.approve_restore(req, by=approver, confirmation=name)
    actions.approve_restore(req, by=approver2, confirmation=name)
    req.refresh_from_db()
    assert req.status == RestoreStatus.APPROVED
    assert actions.expire_restores(now=req.expires_at + timedelta(seconds=1)) == [req.pk]
    assert run_restore(req.pk) == "not-claimed"
    req.refresh_from_db()
    assert req.status == RestoreStatus.EXPIRED
    assert pg_snapshot(pg_cluster, name) == damaged
