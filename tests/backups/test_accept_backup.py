"""A suspiciously small backup is not the last good backup until a person accepts it
(issue 13 §4): freshness, retention, restores and ``backup_verify`` go by the previous good
one; ``accept_backup`` (approvers and administrators, audited, with a reason) changes that."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups import actions
from backups.choices import SourceKind, Verification
from backups.models import BackupRun, BackupSource
from portal.models import Notification, NotificationChannel
from tests.backups.helpers import backup_now, make_source, plan_now, trail

pytestmark = pytest.mark.django_db


@pytest.fixture
def shrunk(kube_api, tmp_path, operator, capture):
    """(source, a good backup, then one of almost nothing: someone deleted nearly all)."""
    NotificationChannel.objects.create(
        name="ops-hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_FAILED"]
    )
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    good = backup_now(source, operator, capture)
    for key in list(kube_api.objects)[1:]:
        del kube_api.objects[key]
    small = backup_now(source, operator, capture)
    return source, good, small


def test_a_suspiciously_small_backup_does_not_count_until_accepted(
    shrunk, operator, viewer, approver, capture
):
    source, good, small = shrunk
    assert small.verification == Verification.VERIFIED and small.shrink_flag
    assert small.awaiting_acceptance and not small.usable
    assert BackupRun.objects.of_source(source).usable().first() == good
    note = Notification.objects.get(kind="BACKUP_FAILED")
    assert "suspiciously small" in note.title and "NOT counted until accepted" in note.title
    assert "FAILED" not in note.title and f"#{good.pk} stays the last good backup" in note.body

    with pytest.raises(CommandError, match="suspiciously small and not accepted: k8s"):
        call_command("backup_verify", "--no-verify")
    with pytest.raises(actions.BackupError, match="suspiciously small"):
        plan_now(capture, small.artifacts.get(), by=operator, dry_run=True)

    for person in (viewer, operator):
        with pytest.raises(actions.BackupError, match="approvers and administrators"):
            actions.accept_backup(small, by=person, reason="the cluster was cleaned up")
    with pytest.raises(actions.BackupError, match="needs a reason"):
        actions.accept_backup(small, by=approver, reason="ok")
    assert trail(small)[-1] == "BACKUP_VERIFIED"

    accepted = actions.accept_backup(small, by=approver, reason="namespaces were retired")
    assert accepted.accepted_by == approver.username and accepted.usable
    assert BackupRun.objects.of_source(source).usable().first() == accepted
    assert trail(small)[-1] == "BACKUP_ACCEPTED"
    again = actions.accept_backup(small, by=approver, reason="a second time, no change")
    assert again.accept_reason == "namespaces were retired"
    assert trail(small).count("BACKUP_ACCEPTED") == 1
    call_command("backup_verify", "--no-verify")  # exit 0 now
    with pytest.raises(actions.BackupError, match="not awaiting acceptance"):
        actions.accept_backup(good, by=approver, reason="a normal backup")


def test_the_next_backup_is_compared_with_the_accepted_one(shrunk, operator, approver, capture):
    source, good, small = shrunk
    actions.accept_backup(small, by=approver, reason="namespaces were retired")
    third = backup_now(source, operator, capture)
    assert third.verification == Verification.VERIFIED and not third.shrink_flag


def test_retention_keeps_the_previous_good_backup_not_the_unaccepted_small_one(shrunk):
    source, good, small = shrunk
    month_ago = small.created - timedelta(days=30)
    BackupRun.objects.filter(pk=good.pk).update(created=month_ago - timedelta(days=1))
    BackupRun.objects.filter(pk=small.pk).update(created=month_ago)
    result = actions.apply_retention(source)
    assert result.keep == [good.pk] and result.delete == [small.pk]


def test_freshness_goes_by_the_last_good_backup(shrunk, settings):
    source, good, small = shrunk
    later = good.created + timedelta(hours=settings.BACKUP_FRESH_HOURS + 1)
    BackupRun.objects.filter(pk=small.pk).update(created=later - timedelta(minutes=5))
    BackupSource.objects.filter(pk=source.pk).update(created=good.created - timedelta(days=1))
    # The small one is minutes old, but the last good backup is older than the window.
    assert actions.check_freshness(later)["stale"] == ["k8s"]


def test_an_approver_accepts_it_on_its_page_with_a_reason(shrunk, client, approver):
    _, good, small = shrunk
    client.force_login(approver)
    listing = client.get(reverse("admin:backups_backuprun_changelist"))
    url = reverse("admin:backups_backuprun_accept", args=[small.pk])
    assert url.encode() in listing.content and b"SHRANK" in listing.content
    page = client.get(url)
    assert page.status_code == 200 and f"#{good.pk}".encode() in page.content
    refused = client.post(url, {"reason": "ok"}, follow=True)
    assert b"needs a reason" in refused.content
    done = client.post(url, {"reason": "the old namespaces were retired"}, follow=True)
    assert b"accepted: it counts as a good backup" in done.content
    small.refresh_from_db()
    assert small.accepted_by == approver.username and small.usable


def test_people_without_the_right_cannot_open_the_accept_page(shrunk, client, operator):
    _, _, small = shrunk
    client.force_login(operator)
    url = reverse("admin:backups_backuprun_accept", args=[small.pk])
    assert client.post(url, {"reason": "trust me, it is fine"}).status_code == 403
    small.refresh_from_db()
    assert small.accepted_at is None
