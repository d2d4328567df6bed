"""'Verify again now' (issue 10 §6, issue 16 §3): one pending verification per backup.

A second request while one is pending changes nothing and says so; it goes
through the audited action ``request_verification``, from the admin as from
anywhere else, and concurrent clicks queue one job."""

import threading

import django_rq
import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from backups import actions
from backups.choices import SourceKind, Verification
from portal.models import AuditEvent
from tests.backups.helpers import backup_now, make_source, run_jobs
from tests.conftest import TEST_PASSWORD


@pytest.fixture
def run(kube_api, tmp_path, operator, capture):
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    done = backup_now(source, operator, capture)
    assert done.verification == Verification.VERIFIED
    return done


def _queued() -> list[str]:
    return django_rq.get_queue("backups").get_job_ids()


def _requests() -> int:
    return AuditEvent.objects.filter(event_type="BACKUP_VERIFY_REQUESTED").count()


@pytest.mark.django_db
def test_a_second_request_returns_the_pending_verification(run, operator, viewer, capture):
    with pytest.raises(actions.BackupError):
        actions.request_verification(run, by=viewer)
    with capture(execute=True):
        first = actions.request_verification(run, by=operator)
    with capture(execute=True):
        second = actions.request_verification(run.pk, by=operator)
    assert first.queued and not second.queued
    assert "already pending" in second.message and operator.username in second.message
    assert second.run.verify_job_id == first.run.verify_job_id
    assert _queued() == [first.run.verify_job_id]
    assert _requests() == 1

    run_jobs()  # the verification runs: the request is answered
    run.refresh_from_db()
    assert run.verify_requested_at is None and run.verified_at is not None
    with capture(execute=True):
        third = actions.request_verification(run, by=operator)
    assert third.queued and _requests() == 2


@pytest.mark.django_db
def test_a_request_whose_job_vanished_is_replaced(run, operator, capture):
    with capture(execute=True):
        first = actions.request_verification(run, by=operator)
    django_rq.get_queue("backups").empty()  # Redis lost it
    with capture(execute=True):
        again = actions.request_verification(run, by=operator)
    assert again.queued and again.run.verify_job_id != first.run.verify_job_id
    assert _queued() == [again.run.verify_job_id]
    events = AuditEvent.objects.filter(event_type="BACKUP_VERIFY_REQUESTED").order_by("id")
    assert [e.details["replaces"] for e in events] == [None, first.run.verify_job_id]


@pytest.mark.django_db
def test_clicking_verify_again_twice_in_the_admin_queues_one_job(run, operator, capture):
    client = Client()
    assert client.login(username=operator.username, password=TEST_PASSWORD)
    url = reverse("admin:backups_backuprun_changelist")
    form = {"action": "verify_now", "_selected_action": [run.pk]}
    with capture(execute=True):
        client.post(url, form, follow=True)
    with capture(execute=True):
        page = client.post(url, form, follow=True)
    assert b"already pending" in page.content
    assert len(_queued()) == 1 and _requests() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_queue_one_verification(run, operator):
    results, errors = [], []
    start = threading.Barrier(8)

    def click():
        try:
            start.wait()
            results.append(actions.request_verification(run.pk, by=operator).queued)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [False] * 7 + [True]
    assert len(_queued()) == 1 and _requests() == 1
