"""A per-database backup restored to a new, empty PostgreSQL server (issue 13 §2).

Each per-database backup also stores the cluster's globals (``pg_dumpall
--globals-only``, without password hashes unless the source asks). A restore
creates the roles the target lacks first — never altering existing ones — and a
failed restore drops what it created (the database, the roles). The new server is
a real throwaway cluster (``PgCluster``), as fresh as one set up for a disaster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from backups.choices import ArtifactFormat, RestoreMode, RestoreStatus, Verification
from tests.backups.conftest import PgCluster, pg_snapshot
from tests.backups.helpers import (
    backup_now,
    dump_of,
    pg_source,
    plan_now,
    read_plain,
    store_plain,
)
from tests.backups.restoring import approve_and_run, pg_target

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh() -> Iterator[PgCluster]:
    """A new server with nothing on it but its bootstrap superuser."""
    cluster = PgCluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def owned(pg_cluster) -> Iterator[dict]:
    """A database whose objects belong to a role of their own, with a grant to another role
    (roles are per cluster: unique names, dropped after the test)."""
    tag = uuid.uuid4().hex[:8]
    names = {"db": f"owned_{tag}", "owner": f"bk_owner_{tag}", "reader": f"bk_reader_{tag}"}
    with pg_cluster.connect("postgres") as conn:
        conn.execute(f"CREATE ROLE {names['owner']} LOGIN PASSWORD 'owner-pw-{tag}'")
        conn.execute(f"CREATE ROLE {names['reader']}")
        conn.execute(f"GRANT {names['reader']} TO {names['owner']}")
        conn.execute(f"ALTER ROLE {names['owner']} SET work_mem TO '8MB'")
        conn.execute(f"COMMENT ON ROLE {names['owner']} IS 'owns the shop; ''really'''")
        conn.execute(f"CREATE DATABASE {names['db']} OWNER {names['owner']}")
    with pg_cluster.connect(names["db"]) as conn:
        conn.execute(f"SET ROLE {names['owner']}")
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text); "
            "INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 500) i; "
            "CREATE VIEW cheap AS SELECT * FROM items WHERE id < 10"
        )
        conn.execute(f"GRANT SELECT ON items TO {names['reader']}")
    yield names
    pg_cluster.drop(names["db"])
    with pg_cluster.connect("postgres") as conn:
        conn.execute(f"DROP ROLE IF EXISTS {names['owner']}")
        conn.execute(f"DROP ROLE IF EXISTS {names['reader']}")


def _roles(cluster: PgCluster) -> dict[str, dict]:
    with cluster.connect("postgres") as conn:
        rows = conn.execute(
            "SELECT r.rolname, r.rolcanlogin, r.rolcreatedb, r.rolconfig, "
            "shobj_description(r.oid, 'pg_authid'), ARRAY(SELECT g.rolname FROM pg_auth_members m "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
            "FROM pg_roles r WHERE r.rolname NOT LIKE 'pg\\_%'"
        ).fetchall()
    return {
        name: {"login": login, "createdb": createdb, "config": config, "comment": comment,
               "member_of": member_of}
        for name, login, createdb, config, comment, member_of in rows
    }  # fmt: skip


def _databases(cluster: PgCluster) -> set[str]:
    with cluster.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_a_restore_to_a_new_server_creates_the_roles_first(
    pg_cluster, owned, fresh, operator, approver, admin_user, capture
):
    before = pg_snapshot(pg_cluster, owned["db"])
    run = backup_now(pg_source("shop", pg_cluster.dsn, owned["db"]), operator, capture)
    assert run.verification == Verification.VERIFIED, run.verify_detail
    globals_ = run.artifacts.get(format=ArtifactFormat.PG_GLOBALS)
    assert globals_.verification == Verification.VERIFIED and globals_.facts["roles"] >= 3
    text = read_plain(globals_).decode()
    assert f"CREATE ROLE {owned['owner']};" in text
    assert "PASSWORD" not in text and "SCRAM-SHA-256" not in text  # --no-role-passwords

    pg_target(admin_user, fresh, name="new-server")
    req, plan = plan_now(capture, dump_of(run), target={"target": "new-server"}, by=operator)
    assert plan["mode"] == RestoreMode.SCRATCH
    assert f"{owned['owner']} (LOGIN)" in plan["creates_roles"]
    assert owned["reader"] in plan["creates_roles"]
    assert "create the roles the target lacks" in plan["steps"]
    req = approve_and_run(capture, req, approver)

    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert set(req.report["roles_created"]) == {owned["owner"], owned["reader"]}
    assert pg_snapshot(fresh, owned["db"]) == before
    with fresh.connect(owned["db"]) as conn:
        owners = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items' UNION ALL "
            "SELECT viewowner FROM pg_views WHERE viewname = 'cheap'"
        ).fetchall()
        readable = conn.execute(
            "SELECT has_table_privilege(%s, 'items', 'SELECT')", [owned["reader"]]
        ).fetchone()[0]
    assert owners == [(owned["owner"],), (owned["owner"],)] and readable
    role = _roles(fresh)[owned["owner"]]
    assert role["login"] and role["config"] == ["work_mem=8MB"]
    assert role["comment"] == "owns the shop; 'really'" and role["member_of"] == [owned["reader"]]


def test_existing_roles_on_the_target_are_never_altered(
    pg_cluster, owned, fresh, operator, approver, admin_user, capture
):
    with fresh.connect("postgres") as conn:
        conn.execute(f"CREATE ROLE {owned['owner']} NOLOGIN CREATEDB")
        conn.execute(f"COMMENT ON ROLE {owned['owner']} IS 'theirs'")
    theirs = _roles(fresh)[owned["owner"]]
    run = backup_now(pg_source("shop", pg_cluster.dsn, owned["db"]), operator, capture)
    pg_target(admin_user, fresh, name="new-server")
    req, plan = plan_now(capture, dump_of(run), target={"target": "new-server"}, by=operator)
    assert plan["creates_roles"] == [owned["reader"]]
    req = approve_and_run(capture, req, approver)

    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert req.report["roles_created"] == [owned["reader"]]
    assert _roles(fresh)[owned["owner"]] == theirs  # no LOGIN, no setting, no new membership
    assert any("existing role: not altered" in s for s in req.report["globals_skipped"])


def test_a_failed_restore_drops_the_database_and_the_roles_it_created(
    pg_cluster, owned, fresh, operator, approver, admin_user, capture, tmp_path
):
    run = backup_now(pg_source("shop", pg_cluster.dsn, owned["db"]), operator, capture)
    dump = dump_of(run)
    pg_target(admin_user, fresh, name="new-server")
    roles_before, databases_before = _roles(fresh), _databases(fresh)
    req, _ = plan_now(capture, dump, target={"target": "new-server"}, by=operator)
    plain = read_plain(dump)
    store_plain(dump, tmp_path, plain[: len(plain) // 2])  # cut short after the plan
    req = approve_and_run(capture, req, approver)

    assert req.status == RestoreStatus.FAILED
    assert "the new database was dropped again" in req.error
    assert f"the roles it created ({owned['owner']}" in req.error and "dropped again" in req.error
    assert _roles(fresh) == roles_before and _databases(fresh) == databases_before

    # Nothing left behind: planning again is again a scratch restore (one approval).
    _, plan = plan_now(
        capture, dump, target={"target": "new-server"}, by=operator, dry_run=True
    )  # fmt: skip
    assert plan["mode"] == RestoreMode.SCRATCH


def test_role_passwords_are_backed_up_only_when_the_source_says_so(
    pg_cluster, owned, operator, capture
):
    source = pg_source("shop", pg_cluster.dsn, owned["db"], pg_role_passwords=True)
    run = backup_now(source, operator, capture)
    text = read_plain(run.artifacts.get(format=ArtifactFormat.PG_GLOBALS)).decode()
    assert f"ALTER ROLE {owned['owner']} WITH" in text and "PASSWORD 'SCRAM-SHA-256$" in text
