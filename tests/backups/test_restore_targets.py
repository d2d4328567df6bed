"""Restores cannot exfiltrate secrets or data (issue 9 §2).

A fake PostgreSQL server on loopback (``faults.FakePostgres``) asks every
client for a cleartext password and records every byte it receives, as a
hostile server would. A plan, preview or restore naming anything but the
backup's own source or a registered restore target must send it nothing;
credential files outside ``BACKUP_SECRETS_DIR`` are refused without being
opened (the kernel's inotify record says so). Restore targets are registered
by administrators only, and every change is audited once.
"""

import json
import os
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from backups import actions, jobs, restore_targets
from backups.choices import RestoreMode, RestoreStatus, SourceKind
from backups.models import RestoreRequest, RestoreTarget
from portal import approvals
from portal.models import AuditEvent
from tests.backups.conftest import pg_snapshot
from tests.backups.faults import FakePostgres, OpenWatch
from tests.backups.helpers import backup_now, dump_of, pg_source, plan_now
from tests.backups.restoring import approve_and_run, pg_target, register, use_secrets_dir
from tests.conftest import TEST_PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def secrets_dir(settings, tmp_path):
    """Credential files must live here."""
    return use_secrets_dir(settings, tmp_path)


@pytest.fixture
def fake_pg():
    server = FakePostgres()
    yield server
    server.stop()


@pytest.fixture
def artifact(pg_cluster, pg_database, operator, capture):
    name = pg_database("exfil")
    run = backup_now(pg_source("exfil-db", pg_cluster.dsn, name), operator, capture)
    assert run.usable, (run.error, run.verify_detail)
    return dump_of(run)


@pytest.fixture
def outside_secret(tmp_path):
    """A file the portal can read but must never send anywhere (like SECRET_KEY)."""
    path = tmp_path / "django_secret_key"
    path.write_text("django-insecure-THE-SECRET-KEY\n")
    return path


def _audit_count(kind: str) -> int:
    return AuditEvent.objects.filter(event_type=kind).count()


def _login(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=TEST_PASSWORD)
    return client


# --- the fake server works: a registered target does get a password ----------------------


def test_the_fake_server_records_what_a_registered_target_is_sent(
    artifact,
    fake_pg,
    admin_user,
    operator,
    secrets_dir,
):
    """Control: without it, "zero bytes" below could just mean a deaf fake server."""
    (secrets_dir / "pg-restore").write_text("registered-target-password\n")
    register(admin_user, name="fake", kind=SourceKind.POSTGRES, host="127.0.0.1",
             port=fake_pg.port, password_file="pg-restore")  # fmt: skip
    with pytest.raises(actions.BackupError, match="password authentication failed"):
        actions.plan_restore(artifact, target={"target": "fake"}, by=operator, dry_run=True)
    assert fake_pg.connections >= 1
    assert b"registered-target-password" in fake_pg.received


# --- free-form targets are refused at input, before any connection ------------------------


@pytest.mark.parametrize(
    "given",
    [
        {"dsn": "FAKE"},
        {"dsn": "FAKE", "database": "x", "password_file": "SECRET"},
        {"url": "redis://127.0.0.1:1"},
        {"target": "FAKE"},
        {"target": "postgres://portal@127.0.0.1:1/db"},
        {"target": "no-such-target"},
        {"password_file": "SECRET"},
        {"host": "127.0.0.1", "port": 1},
        {"kubeconfig": "SECRET", "context": "evil", "resources": ["configmap"]},
    ],
)
def test_a_plan_naming_an_unregistered_target_contacts_nothing(
    artifact, fake_pg, outside_secret, operator, given
):
    given = {
        k: (
            fake_pg.dsn
            if v == "FAKE"
            else str(outside_secret)
            if v == "SECRET"
            else fake_pg.port
            if k == "port"
            else v
        )
        for k, v in given.items()
    }
    watch = OpenWatch(outside_secret)
    before = AuditEvent.objects.count()
    for dry_run in (True, False):
        with pytest.raises(actions.BackupError) as refused:
            actions.plan_restore(artifact, target=given, by=operator, dry_run=dry_run)
        assert refused.value.code == "target"
        assert "registered restore target" in refused.value.message
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""
    assert watch.events() == 0  # the secret file was not even opened
    assert not RestoreRequest.objects.exists() and AuditEvent.objects.count() == before


def test_the_admin_plan_page_refuses_a_free_form_target_without_contacting_it(
    artifact, fake_pg, outside_secret, operator
):
    url = reverse("admin:backups_restorerequest_plan")
    client = _login(operator)
    for target in (fake_pg.dsn, f"127.0.0.1:{fake_pg.port}", "not-registered"):
        for button in ("preview", "create"):
            page = client.post(url, {"artifact": artifact.pk, "target": target, button: "1"})
            assert page.status_code == 200
            assert b"registered restore target" in page.content
    # Fields that do not exist on the form are ignored, never used as a target.
    page = client.post(url, {"artifact": artifact.pk, "dsn": fake_pg.dsn, "preview": "1",
                             "password_file": str(outside_secret)})  # fmt: skip
    assert b"Preview" in page.content and b"the backup&#x27;s own source" in page.content
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""
    assert not RestoreRequest.objects.exists()


def test_the_cli_refuses_a_free_form_target_without_contacting_it(
    artifact, fake_pg, operator, capsys
):
    for target in (fake_pg.dsn, json.dumps({"dsn": fake_pg.dsn}), "not-registered"):
        with pytest.raises(CommandError, match="registered restore target"):
            call_command("backup_restore", "plan", str(artifact.pk), "--as", operator.username,
                         "--target", target, "--dry-run")  # fmt: skip
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""
    assert not RestoreRequest.objects.exists()


def test_a_restore_whose_target_changed_after_approval_contacts_nothing(
    artifact, fake_pg, pg_cluster, operator, approver, admin_user, capture
):
    """An administrator repoints a registered target (say, at the wrong host) after people
    approved a restore into it: the restore is refused; the new host gets nothing."""
    target = pg_target(admin_user, pg_cluster, name="drill-pg")
    scratch = f"{artifact.component}_drill"
    spec = {"target": "drill-pg", "database": scratch}
    first, plan = plan_now(capture, artifact, target=spec, by=operator)
    assert plan["mode"] == RestoreMode.SCRATCH and first.restore_target == target
    restore_targets.update_restore_target(target, by=admin_user, port=fake_pg.port)
    with pytest.raises(actions.BackupError, match="changed since this restore was planned"):
        actions.approve_restore(first, by=approver)
    # Changed back, it is still another revision than the one shown: still refused.
    restore_targets.update_restore_target(target, by=admin_user, port=pg_cluster.port)
    with pytest.raises(actions.BackupError, match="changed since"):
        actions.approve_restore(first, by=approver)

    # Planned and approved, then repointed before the worker runs it: the worker refuses.
    second, _ = plan_now(capture, artifact, target=spec, by=operator)
    actions.approve_restore(second, by=approver)
    second.refresh_from_db()
    assert second.status == RestoreStatus.APPROVED
    restore_targets.update_restore_target(target, by=admin_user, port=fake_pg.port)
    assert jobs.run_restore(second.pk) == "failed"
    second.refresh_from_db()
    assert second.status == RestoreStatus.FAILED and "changed since" in second.error
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""
    with pg_cluster.connect("postgres") as conn:
        exists = "SELECT 1 FROM pg_database WHERE datname = %s"
        assert conn.execute(exists, [scratch]).fetchone() is None


def test_an_old_request_with_a_free_form_target_never_runs(artifact, fake_pg, operator, approver):
    """A request stored before targets were registered (a DSN in its target) is refused."""
    now = timezone.now()
    req = RestoreRequest.objects.create(
        artifact=artifact, mode=RestoreMode.SCRATCH, status=RestoreStatus.PLANNED,
        target={"dsn": fake_pg.dsn, "database": "stolen", "password_env": ""},
        target_name="stolen", requested_by=operator, requester_label=operator.username,
        status_changed_at=now, created=now,
    )  # fmt: skip
    with pytest.raises(actions.BackupError, match="free-form"):
        actions.approve_restore(req, by=approver)
    # Even with a signature and APPROVED in the table, the worker refuses it.
    approvals.sign(req, approver, fingerprint=None)
    RestoreRequest.objects.filter(pk=req.pk).update(
        status=RestoreStatus.APPROVED, expires_at=now + timedelta(minutes=5)
    )
    assert jobs.run_restore(req.pk) == "failed"
    req.refresh_from_db()
    assert req.status == RestoreStatus.FAILED and "free-form" in req.error
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""


def test_a_disabled_target_is_refused(artifact, pg_cluster, operator, admin_user):
    target = pg_target(admin_user, pg_cluster, name="old-dr")
    restore_targets.update_restore_target(target, by=admin_user, enabled=False)
    with pytest.raises(actions.BackupError, match="disabled"):
        actions.plan_restore(artifact, target={"target": "old-dr"}, by=operator, dry_run=True)


def test_a_registered_target_restores_end_to_end(
    artifact, pg_cluster, operator, approver, admin_user, capture
):
    before = pg_snapshot(pg_cluster, artifact.component)
    pg_target(admin_user, pg_cluster, name="drill-pg", database=f"{artifact.component}_dr")
    with pytest.raises(actions.BackupError, match="accepts only database"):
        actions.plan_restore(artifact, target={"target": "drill-pg", "database": "postgres"},
                             by=operator, dry_run=True)  # fmt: skip
    req, plan = plan_now(capture, artifact, target={"target": "drill-pg"}, by=operator)
    assert plan["registered_target"] == "drill-pg" and plan["target"]["revision"] == 1
    try:
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, f"{artifact.component}_dr") == before
    finally:
        pg_cluster.drop(f"{artifact.component}_dr")


# --- credential files: only under BACKUP_SECRETS_DIR, refused unread ------------------------


def test_a_password_file_outside_the_secrets_dir_is_refused_unread(
    admin_user,
    outside_secret,
    secrets_dir,
    tmp_path,
):
    watch = OpenWatch(outside_secret)
    (secrets_dir / "escape").symlink_to(outside_secret)
    paths = [
        str(outside_secret), "escape", str(secrets_dir / "escape"), "../django_secret_key",
        str(secrets_dir / ".." / "django_secret_key"),
    ]  # fmt: skip
    for path in paths:
        with pytest.raises(actions.BackupError, match="outside BACKUP_SECRETS_DIR"):
            register(admin_user, name="evil", kind=SourceKind.POSTGRES, host="127.0.0.1",
                     password_file=path)  # fmt: skip
    assert watch.events() == 0
    assert not RestoreTarget.objects.exists()
    assert _audit_count("RESTORE_TARGET_CREATED") == 0
    # The watch does see a read (the test can fail).
    outside_secret.read_text()
    assert watch.events() >= 1


def test_a_credential_file_swapped_for_an_escaping_link_is_refused_before_connecting(
    artifact,
    fake_pg,
    admin_user,
    operator,
    outside_secret,
    secrets_dir,
):
    (secrets_dir / "pg-restore").write_text("fine\n")
    register(admin_user, name="fake", kind=SourceKind.POSTGRES, host="127.0.0.1",
             port=fake_pg.port, password_file="pg-restore")  # fmt: skip
    os.unlink(secrets_dir / "pg-restore")
    (secrets_dir / "pg-restore").symlink_to(outside_secret)  # someone swaps it afterwards
    watch = OpenWatch(outside_secret)
    with pytest.raises(actions.BackupError, match="outside BACKUP_SECRETS_DIR"):
        actions.plan_restore(artifact, target={"target": "fake"}, by=operator, dry_run=True)
    assert watch.events() == 0
    assert fake_pg.connections == 0 and bytes(fake_pg.received) == b""


def test_file_credentials_need_a_secrets_dir_and_a_regular_file(
    admin_user,
    settings,
    tmp_path,
    secrets_dir,
):
    os.mkfifo(secrets_dir / "fifo")
    register(admin_user, name="fifo", kind=SourceKind.POSTGRES, host="127.0.0.1",
             password_file="fifo")  # fmt: skip
    from backups import credentials

    with pytest.raises(credentials.CredentialError, match="not a regular file"):
        credentials.read_secret_file("fifo")  # refused at once, never blocks on the FIFO
    settings.BACKUP_SECRETS_DIR = None
    with pytest.raises(actions.BackupError, match="BACKUP_SECRETS_DIR, which is not set"):
        register(admin_user, name="nodir", kind=SourceKind.POSTGRES, host="127.0.0.1",
                 password_file=str(tmp_path / "x"))  # fmt: skip


# --- who may register targets; every change audited once -----------------------------


def test_only_administrators_register_and_change_targets(
    operator, approver, admin_user, pg_cluster
):
    for person in (operator, approver):
        with pytest.raises(actions.BackupError) as refused:
            register(person, name="mine", kind=SourceKind.POSTGRES, host="evil.example")
        assert refused.value.code == "permission"
    target = pg_target(admin_user, pg_cluster, name="dr")
    assert _audit_count("RESTORE_TARGET_CREATED") == 1
    with pytest.raises(actions.BackupError):
        restore_targets.update_restore_target(target, by=operator, host="evil.example")
    restore_targets.update_restore_target(target, by=admin_user, host="db2.internal")
    restore_targets.update_restore_target(target, by=admin_user, host="db2.internal")  # no-op
    target.refresh_from_db()
    assert (target.host, target.revision) == ("db2.internal", 2)
    changed = AuditEvent.objects.filter(event_type="RESTORE_TARGET_UPDATED")
    assert changed.count() == 1
    assert changed.get().details["changes"] == {"host": [pg_cluster.host, "db2.internal"]}


def test_the_admin_pages_for_targets_are_for_administrators(operator, viewer, admin_user):
    add = reverse("admin:backups_restoretarget_add")
    form = {"name": "dr-pg", "kind": "postgres", "enabled": "on", "host": "db.internal",
            "port": "5433", "username": "restore"}  # fmt: skip
    assert _login(operator).post(add, form).status_code == 403
    assert _login(viewer).get(add).status_code == 403
    assert not RestoreTarget.objects.exists()
    response = _login(admin_user).post(add, form)
    assert response.status_code == 302, response.content[:2000]
    target = RestoreTarget.objects.get()
    assert target.where == "db.internal:5433" and target.created_by == admin_user.username
    change = reverse("admin:backups_restoretarget_change", args=[target.pk])
    assert _login(operator).post(change, {**form, "host": "evil.example"}).status_code == 403
    _login(admin_user).post(change, {**form, "port": "5434"})
    target.refresh_from_db()
    assert target.port == 5434 and target.revision == 2
    assert _audit_count("RESTORE_TARGET_CREATED") == 1
    assert _audit_count("RESTORE_TARGET_UPDATED") == 1
    assert _login(viewer).get(reverse("admin:backups_restoretarget_changelist")).status_code == 200
