"""Fixtures of the backup tests: real PostgreSQL databases, throwaway redis-servers,
and a stand-in Kubernetes API server (``kubeapi``: no cluster can run here)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from portal.lib.localservices import start_postgres, stop_postgres
from tests.backups.kubeapi import FakeKubeAPI
from tests.services import RedisServer


@pytest.fixture(autouse=True)
def backup_settings(settings, tmp_path):
    """Each test gets its own storage directory; progress is pushed often. Credential
    files (password files, kubeconfigs) are accepted only under BACKUP_SECRETS_DIR: the
    test's own directory."""
    settings.BACKUP_STORAGE_DIR = tmp_path / "storage"
    settings.BACKUP_SECRETS_DIR = tmp_path
    settings.BACKUP_DISK_WATCH_PATHS = [str(tmp_path / "storage")]
    settings.BACKUP_PROGRESS_INTERVAL = 0.05
    return settings


@pytest.fixture
def capture(django_capture_on_commit_callbacks):
    """Run on-commit hooks (enqueues) at the end of a ``with capture(execute=True)`` block."""
    return django_capture_on_commit_callbacks


class PgCluster:
    """A private PostgreSQL cluster for backup sources and restore targets (fsync off:
    creating and dropping databases costs milliseconds, not checkpoints)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="backups-pg-"))
        self.root.chmod(0o755)  # the server runs as postgres
        url, self._pg_ctl, self._datadir = start_postgres(self.root)
        parts = urlsplit(url)
        self.host, self.port, self.user = parts.hostname, parts.port, parts.username

    @property
    def dsn(self) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}"

    def connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname, autocommit=True
        )

    def drop(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        stop_postgres(self._pg_ctl, self._datadir)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private cluster for the whole session (about 3 s to create)."""
    cluster = PgCluster()
    yield cluster
    cluster.stop()


SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
                        created timestamptz NOT NULL DEFAULT '2026-01-01');
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id),
                     total numeric(12, 2), note text, tags text[], payload jsonb);
CREATE SEQUENCE invoice_numbers START 1000;
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 500;
INSERT INTO customers (name, email)
    SELECT 'customer ' || i, 'c' || i || '@example.test' FROM generate_series(1, 1500) i;
INSERT INTO orders (customer_id, total, note, tags, payload)
    SELECT 1 + (i % 1500), (i * 7.31) % 1000, md5(i::text), ARRAY['a', 'b' || i],
           jsonb_build_object('i', i, 'even', i % 2 = 0)
    FROM generate_series(1, 4000) i;
SELECT setval('invoice_numbers', 1234);
"""


@pytest.fixture
def pg_database(pg_cluster) -> Iterator:
    """Factory: a new database with tables, a view, sequences and 5,500 rows; dropped after."""
    created: list[str] = []

    def make(prefix: str = "bk", *, schema: str = SCHEMA) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with pg_cluster.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        if schema:
            with pg_cluster.connect(name) as conn:
                conn.execute(schema)
        return name

    yield make
    for name in created:
        pg_cluster.drop(name)


def pg_snapshot(cluster: PgCluster, dbname: str) -> dict:
    """Everything a restore must give back: every row of every table, and sequence values."""
    with cluster.connect(dbname) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        ]
        rows = {
            t: conn.execute(
                sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(t))
            ).fetchall()
            for t in tables
        }
        sequences = {
            name: conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(name))
            ).fetchone()
            for (name,) in conn.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        }
        views = conn.execute(
            "SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return {"rows": rows, "sequences": sequences, "views": views}


@pytest.fixture
def redis_server(tmp_path) -> Iterator:
    """Factory: start throwaway redis-servers; all stopped after the test."""
    servers: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", password)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def kube_api() -> Iterator[FakeKubeAPI]:
    """The stand-in Kubernetes API server (see kubeapi.py for why it is a stand-in)."""
    api = FakeKubeAPI()
    api.add("configmaps", "default", "app-config", data={"LOG_LEVEL": "info", "WORKERS": "4"})
    api.add("secrets", "default", "db-password", type="Opaque", data={"password": "czNjcjN0"})
    api.add("deployments", "shop", "web", spec={"replicas": 2, "selector": {"app": "web"}},
            status={"readyReplicas": 2})  # fmt: skip
    api.add("replicasets", "shop", "web-5d9c", spec={"replicas": 2},
            metadata={"ownerReferences": [{"kind": "Deployment", "name": "web"}]})  # fmt: skip
    api.add("services", "shop", "web", spec={"clusterIP": "10.0.0.12", "ports": [{"port": 80}]})
    api.add(
        "persistentvolumeclaims",
        "shop",
        "data",
        spec={"resources": {"requests": {"storage": "1Gi"}}},
    )
    api.add("ingresses", "shop", "web", spec={"rules": [{"host": "shop.example.test"}]})
    api.start()
    yield api
    api.stop()
