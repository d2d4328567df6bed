"""django_rq's queue pages are the admin role's alone; everyone else sees counts only.

Real Redis (the test database), real RQ jobs and registries, a real in-process worker
for the failed job. The attack of issue 9: a viewer with a valid CSRF token POSTing
to ``/admin/django_rq/dashboard/queues/<n>/empty/`` emptied the ``pra`` queue.
"""

from __future__ import annotations

import django_rq
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django_rq.settings import get_queues_map
from rq import SimpleWorker, Worker
from rq.registry import FailedJobRegistry

pytestmark = pytest.mark.django_db

SECRET_ARG = "arg-that-only-admins-may-read-7c1e"
REFUSED_ROLES = ("viewer", "operator", "approver")


def _queue(name: str = "pra"):
    # "auto": these tests run inside a transaction that never commits.
    return django_rq.get_queue(name, commit_mode="auto")


def _index(name: str = "pra") -> int:
    return get_queues_map()[name]


def _csrf_client(user) -> tuple[Client, str]:
    """A client that enforces CSRF, as a browser would, and a valid token for it."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get(reverse("admin:index")).status_code == 200
    return client, client.cookies[settings.CSRF_COOKIE_NAME].value


def _failed_job():
    """A job that really ran and failed (its traceback and arguments are in Redis)."""
    queue = _queue("default")
    job = queue.enqueue("builtins.int", SECRET_ARG)
    SimpleWorker([queue], connection=queue.connection).work(burst=True, with_scheduler=False)
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
    return job


def _admin_pages(job) -> list[str]:
    pra, default = _index("pra"), _index("default")
    return [
        reverse("admin:django_rq_home"),
        reverse("admin:django_rq_home_json"),
        reverse("admin:django_rq_jobs", args=[pra]),
        reverse("admin:django_rq_queue_details", args=[pra]),
        reverse("admin:django_rq_failed_jobs", args=[default]),
        reverse("admin:django_rq_started_jobs", args=[pra]),
        reverse("admin:django_rq_workers", args=[pra]),
        reverse("admin:django_rq_job_detail", args=[default, job.id]),
        reverse("admin:django_rq_dashboard_changelist"),
        "/admin/django_rq/",
    ]


@pytest.mark.parametrize("role", REFUSED_ROLES)
def test_a_non_admin_cannot_empty_a_queue(request, role):
    user = request.getfixturevalue(role)
    queue = _queue("pra")
    queue.enqueue("builtins.len", "waiting")
    client, token = _csrf_client(user)
    url = reverse("admin:django_rq_clear", args=[_index("pra")])
    response = client.post(url, {"csrfmiddlewaretoken": token, "post": "yes"})
    assert response.status_code == 403
    assert queue.count == 1


def test_the_admin_can_empty_a_queue(admin_user):
    """The same request works for the admin role: the refusal above is the gate's."""
    queue = _queue("pra")
    queue.enqueue("builtins.len", "waiting")
    client, token = _csrf_client(admin_user)
    url = reverse("admin:django_rq_clear", args=[_index("pra")])
    response = client.post(url, {"csrfmiddlewaretoken": token, "post": "yes"})
    assert response.status_code in (200, 302)
    assert queue.count == 0


@pytest.mark.parametrize("role", REFUSED_ROLES)
def test_a_non_admin_cannot_delete_requeue_or_clear_failed_jobs(request, role):
    user = request.getfixturevalue(role)
    job = _failed_job()
    default = _index("default")
    client, token = _csrf_client(user)
    registry = FailedJobRegistry(queue=_queue("default"))
    for name, args in (
        ("admin:django_rq_delete_job", [default, job.id]),
        ("admin:django_rq_requeue_job", [default, job.id]),
        ("admin:django_rq_delete_failed_jobs", [default]),
        ("admin:django_rq_requeue_all", [default]),
        ("admin:django_rq_stop_job", [default, job.id]),
        ("admin:django_rq_actions", [default]),
    ):
        response = client.post(
            reverse(name, args=args),
            {"csrfmiddlewaretoken": token, "post": "yes", "action": "delete",
             "job_ids": [job.id]},
        )  # fmt: skip
        assert response.status_code == 403, name
    assert registry.get_job_ids() == [job.id]
    assert _queue("default").count == 0


@pytest.mark.parametrize("role", REFUSED_ROLES)
def test_a_non_admin_sees_none_of_the_queue_pages(request, client, role):
    client.force_login(request.getfixturevalue(role))
    for url in _admin_pages(_failed_job()):
        response = client.get(url)
        assert response.status_code in (403, 404), url  # 404: an app index with no models
        assert SECRET_ARG not in response.content.decode(), url


def test_the_admin_sees_the_queue_pages(client, admin_user):
    client.force_login(admin_user)
    job = _failed_job()
    for url in _admin_pages(job):
        assert client.get(url).status_code == 200, url
    detail = reverse("admin:django_rq_job_detail", args=[_index("default"), job.id])
    assert SECRET_ARG in client.get(detail).content.decode()


def test_anonymous_users_go_to_the_login_page(client):
    for url in (reverse("admin:django_rq_home"), reverse("admin:django_rq_home_json")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("role", REFUSED_ROLES)
def test_the_queue_link_is_hidden_from_non_admins(request, client, role):
    client.force_login(request.getfixturevalue(role))
    page = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:django_rq_dashboard_changelist") not in page
    assert reverse("queue_status") in page


def test_the_admin_index_links_the_queue_pages_for_the_admin(client, admin_user):
    client.force_login(admin_user)
    page = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:django_rq_dashboard_changelist") in page


def _summary(client) -> dict[str, dict[str, str]]:
    import re

    page = client.get(reverse("queue_status"))
    assert page.status_code == 200
    html = page.content.decode()
    rows = {}
    for name, body in re.findall(r'<tr data-queue="([^"]+)">(.*?)</tr>', html, re.S):
        rows[name] = dict(re.findall(r'<td class="(\w+)">(\d+)', body))
    return rows


@pytest.mark.parametrize("role", [*REFUSED_ROLES, "admin_user"])
def test_every_role_sees_queue_depths_workers_and_failures_but_no_job(request, client, role):
    client.force_login(request.getfixturevalue(role))
    _failed_job()
    for _ in range(3):
        _queue("pra").enqueue("builtins.len", SECRET_ARG)
    worker = Worker([_queue("pra")], connection=_queue("pra").connection, name="pra-worker-1")
    worker.register_birth()
    worker.heartbeat()
    try:
        rows = _summary(client)
    finally:
        worker.register_death()
    assert set(rows) == set(settings.RQ_QUEUES)
    assert rows["pra"] == {"depth": "3", "workers": "1", "started": "0", "scheduled": "0",
                           "failed": "0"}  # fmt: skip
    assert rows["default"]["failed"] == "1"
    assert rows["default"]["workers"] == "0"
    page = client.get(reverse("queue_status")).content.decode()
    assert SECRET_ARG not in page
    assert "Traceback" not in page and "ValueError" not in page


def test_the_summary_needs_a_role(client, nobody):
    response = client.get(reverse("queue_status"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    nobody.is_staff = True
    nobody.save()
    client.force_login(nobody)
    assert client.get(reverse("queue_status")).status_code == 403


def test_the_summary_says_when_redis_is_down(client, viewer, settings):
    settings.RQ_QUEUES = {"pra": {"URL": "redis://127.0.0.1:1/0", "DEFAULT_TIMEOUT": 60}}
    client.force_login(viewer)
    response = client.get(reverse("queue_status"))
    assert response.status_code == 200
    assert "unavailable (ConnectionError)" in response.content.decode()
