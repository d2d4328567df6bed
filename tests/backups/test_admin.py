"""The admin: run now, the restore plan page (preview), and approve/reject buttons only
for those allowed, through POST with CSRF like the remediation admin."""

import pytest
from django.test import Client
from django.urls import reverse

from backups.choices import RestoreStatus, SourceKind
from backups.models import BackupRun, RestoreRequest
from tests.backups.helpers import backup_now, dump_of, make_source, pg_source, run_jobs
from tests.conftest import TEST_PASSWORD

pytestmark = pytest.mark.django_db


def _login(user) -> Client:
    client = Client(enforce_csrf_checks=False)
    assert client.login(username=user.username, password=TEST_PASSWORD)
    return client


def test_run_now_queues_a_backup_and_the_dashboard_shows_it(
    kube_api, tmp_path, operator, viewer, capture
):
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    url = reverse("admin:backups_backupsource_changelist")
    with capture(execute=True):
        response = _login(operator).post(
            url, {"action": "run_now", "_selected_action": [source.pk]}, follow=True
        )
    assert response.status_code == 200
    run = BackupRun.objects.get()
    run_jobs()
    run.refresh_from_db()
    assert run.status == "SUCCEEDED"
    page = _login(viewer).get("/")
    assert b"panel-backups" in page.content and b"k8s" in page.content
    assert (
        _login(viewer).get(reverse("admin:backups_backuprun_change", args=[run.pk])).status_code
        == 200
    )


def test_plan_page_previews_then_approvers_sign_on_the_restore_page(
    kube_api, tmp_path, operator, approver, approver2, viewer, capture, settings
):
    settings.BACKUP_SECRETS_DIR = tmp_path  # the kubeconfig is a credential file
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    artifact = backup_now(source, operator, capture).artifacts.get()
    plan_url = reverse("admin:backups_restorerequest_plan")
    listing = _login(operator).get(reverse("admin:backups_restorerequest_changelist"))
    assert b"plan-restore-link" in listing.content
    data = {"artifact": artifact.pk, "target": "", "resources": "configmap", "confirmation": ""}
    assert _login(viewer).post(plan_url, {**data, "preview": "1"}).status_code == 403
    preview = _login(operator).post(plan_url, {**data, "preview": "1"})
    assert b"Preview" in preview.content and b"Will overwrite" in preview.content
    assert not RestoreRequest.objects.exists()
    refused = _login(operator).post(plan_url, {**data, "create": "1"}, follow=True)
    assert b"Type its name" in refused.content and not RestoreRequest.objects.exists()
    _login(operator).post(plan_url, {**data, "confirmation": "standin", "create": "1"})
    req = RestoreRequest.objects.get()
    assert req.status == RestoreStatus.PLANNED

    change = reverse("admin:backups_restorerequest_change", args=[req.pk])
    assert b"approve-button" not in _login(operator).get(change).content  # the requester
    assert b"approve-button" not in _login(viewer).get(change).content
    page = _login(approver).get(change)
    assert b"approve-button" in page.content and b"Will overwrite" in page.content
    approve = reverse("admin:backups_restorerequest_approve", args=[req.pk])
    fingerprint = req.approval_fingerprint()
    assert _login(viewer).post(approve, {"confirmation": "standin"}).status_code == 403
    _login(approver).post(approve, {"confirmation": "standin", "fingerprint": fingerprint})
    with capture(execute=True):
        _login(approver2).post(approve, {"confirmation": "standin", "fingerprint": fingerprint})
    req.refresh_from_db()
    assert req.status == RestoreStatus.APPROVED
    run_jobs()
    req.refresh_from_db()
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert req.safety_run.status == "SUCCEEDED"


def test_a_scratch_restore_is_approved_by_one_other_person_on_its_page(
    pg_cluster, pg_database, operator, approver, capture
):
    name = pg_database("page")
    artifact = backup_now(pg_source("page-db", pg_cluster.dsn, name), operator, capture)
    artifact = dump_of(artifact)
    plan_url = reverse("admin:backups_restorerequest_plan")
    page = _login(operator).get(plan_url + f"?artifact={artifact.pk}")
    assert b"the backup&#x27;s own source" in page.content  # the target is chosen, not typed
    scratch = f"{name}_drill"
    data = {"artifact": artifact.pk, "target": "", "database": scratch, "create": "1"}
    _login(operator).post(plan_url, data)
    req = RestoreRequest.objects.get()
    assert (req.mode, req.status) == ("scratch", RestoreStatus.PLANNED)
    change = reverse("admin:backups_restorerequest_change", args=[req.pk])
    assert b"approve-button" not in _login(operator).get(change).content  # the requester
    page = _login(approver).get(change).content
    assert b"approve-button" in page and b'name="confirmation"' not in page  # MEDIUM: no typing
    approve = reverse("admin:backups_restorerequest_approve", args=[req.pk])
    try:
        with capture(execute=True):
            _login(approver).post(approve, {"fingerprint": req.approval_fingerprint()})
        req.refresh_from_db()
        assert req.status == RestoreStatus.APPROVED
        run_jobs()
        req.refresh_from_db()
        assert req.status == RestoreStatus.SUCCEEDED, req.error
    finally:
        pg_cluster.drop(scratch)


def test_the_plan_page_lists_the_newest_artifacts_and_takes_an_older_one_by_id(
    kube_api, tmp_path, operator, capture, settings, monkeypatch
):
    """A year of nightly runs is thousands of artifacts: the list shows the newest only."""
    from backups import admin as backups_admin

    monkeypatch.setattr(backups_admin, "ARTIFACT_CHOICES", 1)
    settings.BACKUP_SECRETS_DIR = tmp_path
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    older = backup_now(source, operator, capture).artifacts.get()
    newer = backup_now(source, operator, capture).artifacts.get()
    plan_url = reverse("admin:backups_restorerequest_plan")
    page = _login(operator).get(plan_url).content.decode()
    assert f'value="{newer.pk}"' in page and f'value="{older.pk}"' not in page
    asked = _login(operator).get(f"{plan_url}?artifact={older.pk}").content.decode()
    assert f'value="{older.pk}" selected' in asked
    data = {"artifact": older.pk, "target": "", "resources": "configmap", "confirmation": ""}
    preview = _login(operator).post(plan_url, {**data, "preview": "1"})
    assert b"Preview" in preview.content and b"Will overwrite" in preview.content
    bad = _login(operator).post(plan_url, {**data, "artifact": "999999", "preview": "1"})
    assert b"Select a valid choice" in bad.content and b"Will overwrite" not in bad.content
