import pytest
from rq import Worker

from portal.lib.redis import get_redis

pytestmark = pytest.mark.django_db


@pytest.fixture
def live_worker():
    """A real RQ worker registration with a fresh heartbeat (what a running worker writes)."""
    worker = Worker(["default"], connection=get_redis())
    worker.register_birth()
    worker.heartbeat()
    yield worker
    worker.register_death()


def test_health_is_ok_with_database_redis_and_a_live_worker(client, live_worker):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "ok",
        "database": "ok",
        "redis": "ok",
        "worker": "ok",
        "workers_alive": 1,
    }


def test_health_is_503_without_a_worker(client):
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["worker"] == "error: no live RQ worker"


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
