import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from rq import Worker

from portal.lib.redis import get_redis
from tests.stack import BASE_DIR, stack_env, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def live_worker():
    """A real RQ worker registration with a fresh heartbeat (what a running worker writes)."""
    worker = Worker(list(django_settings.RQ_QUEUES), connection=get_redis())
    worker.register_birth()
    worker.heartbeat()
    yield worker
    worker.register_death()


def test_health_is_ok_with_database_redis_and_a_live_worker(client, live_worker):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    queues = body.pop("queues")
    assert body == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "worker": "ok",
        "workers_alive": 1,
    }
    assert set(queues) == {"control", "pra", "default", "backups"}
    assert all(q == {"status": "ok", "workers": 1, "depth": 0} for q in queues.values())


def test_health_is_503_without_a_worker(client):
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["worker"] == "error: no live worker for control, pra, default, backups"


def test_health_names_each_queue_nobody_serves(client):
    """A live pra worker does not make the product healthy: the control queue (sweeps,
    backup slots) and the backups queue need theirs."""
    worker = Worker(["pra", "default"], connection=get_redis())
    worker.register_birth()
    worker.heartbeat()
    try:
        response = client.get("/health")
    finally:
        worker.register_death()
    assert response.status_code == 503
    body = response.json()
    assert body["worker"] == "error: no live worker for control, backups"
    assert body["queues"]["pra"]["workers"] == 1
    assert body["queues"]["control"]["status"] == "error: no live worker serves this queue"


@pytest.mark.django_db(transaction=True)
def test_a_worker_registers_again_after_a_redis_flush(client, tmp_path):
    """Real ``rqworker`` processes (the portal's worker class, a short TTL): FLUSHDB wipes
    their registrations; /health says so, and then the next heartbeat restores them."""
    env = stack_env(RQ_WORKER_TTL="20")  # idle heartbeat every 5 s
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", *django_settings.RQ_QUEUES],
        env=env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: client.get("/health").status_code == 200, 30, "the worker to register")
        # Frozen (idle: it holds nothing) across the flush and the check: its next heartbeat
        # could otherwise land in between and register it again before /health looks.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            get_redis().flushdb()
            assert client.get("/health").status_code == 503
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: client.get("/health").status_code == 200, 30, "re-registration")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "registration lost" in (tmp_path / "worker.log").read_text()


def test_health_is_503_when_redis_is_unreachable(client, settings, live_worker):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["redis"].startswith("error")
    assert body["database"] == "ok"


def test_metrics_are_prometheus_text_from_loopback(client, live_worker):
    client.get("/health")
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'portal_queue_depth{queue="pra"} 0.0' in text
    assert "portal_redis_up 1.0" in text
    assert 'portal_http_requests_total{method="GET",status="200"}' in text


def test_behind_a_proxy_only_the_token_opens_metrics(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    ok = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert ok.status_code == 200


def test_metrics_refuse_other_addresses_unless_token(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    wrong = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 403
    ok = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert ok.status_code == 200
