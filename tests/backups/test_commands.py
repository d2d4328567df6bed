"""The management commands: backup_run (progress bar), backup_verify (exit status),
backup_restore (dry run, confirmation, approvals by request id)."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from backups.choices import RestoreStatus, SourceKind
from backups.models import BackupRun, RestoreRequest
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import dump_of, make_source, pg_source, run_jobs

pytestmark = pytest.mark.django_db


def test_backup_run_shows_progress_and_backup_verify_reports_freshness(
    kube_api, tmp_path, capsys, operator
):
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    make_source("never", SourceKind.REDIS, dsn="redis://127.0.0.1:1")
    with pytest.raises(CommandError, match="k8s, never"):
        call_command("backup_verify")
    call_command("backup_run", "k8s", "--as", operator.username)
    captured = capsys.readouterr()
    assert "MB/s" in captured.err  # the progress bar
    assert "Backup #" in captured.out and "verification VERIFIED" in captured.out

    with pytest.raises(CommandError, match="never"):
        call_command("backup_verify")
    out = capsys.readouterr().out
    assert "k8s" in out and "VERIFIED" in out and "never" in out
    call_command("backup_verify", "k8s", "--all")  # fresh and verified: exit 0

    run = BackupRun.objects.get(source=source)
    BackupRun.objects.filter(pk=run.pk).update(created=run.created - timedelta(days=3))
    with pytest.raises(CommandError, match="k8s"):
        call_command("backup_verify", "k8s")


def test_backup_restore_plans_from_the_cli_and_people_approve_in_the_portal(
    pg_cluster, pg_database, capsys, client, operator, approver, approver2, capture
):
    name = pg_database()
    good = pg_snapshot(pg_cluster, name)
    pg_source("db", pg_cluster.dsn, name)
    call_command("backup_run", "db")
    run = BackupRun.objects.get()
    artifact = dump_of(run)
    with pg_cluster.connect(name) as conn:
        conn.execute("TRUNCATE orders")

    call_command("backup_restore", "plan", str(artifact.pk), "--as", operator.username, "--dry-run")
    out = capsys.readouterr().out
    assert "OVERWRITES" in out and "Dry run: nothing was changed." in out
    assert f"--confirm {name}" in out
    with pytest.raises(CommandError, match="Type its name"):
        call_command("backup_restore", "plan", str(artifact.pk), "--as", operator.username)
    with capture(execute=True):
        call_command(
            "backup_restore", "plan", str(artifact.pk), "--as", operator.username, "--confirm", name
        )
    req = RestoreRequest.objects.get()
    assert req.status == RestoreStatus.PLANNED
    assert f"/admin/backups/restorerequest/{req.pk}/change/" in capsys.readouterr().out
    # Approval is not a command: each approver signs on the restore's page, as themselves.
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("backup_restore", "approve", str(req.pk))
    url = f"/admin/backups/restorerequest/{req.pk}/approve/"
    shown = {"fingerprint": req.approval_fingerprint(), "confirmation": name}
    client.force_login(approver)
    client.post(url, shown)
    client.force_login(approver2)
    with capture(execute=True):
        client.post(url, shown)
    run_jobs()
    call_command("backup_restore", "status", str(req.pk))
    assert "SUCCEEDED" in capsys.readouterr().out
    assert pg_snapshot(pg_cluster, name) == good
