"""Helpers of the restore tests: registered targets, approvals, a secrets directory."""

from __future__ import annotations

from backups import actions, restore_targets
from backups.choices import SourceKind
from backups.models import RestoreRequest, RestoreTarget
from tests.backups.helpers import run_jobs


def use_secrets_dir(settings, tmp_path):
    """BACKUP_SECRETS_DIR for the test (``settings`` is pytest-django's fixture)."""
    path = tmp_path / "secrets"
    path.mkdir()
    settings.BACKUP_SECRETS_DIR = path
    return path


def register(by, **fields) -> RestoreTarget:
    return restore_targets.create_restore_target(by=by, **fields)


def pg_target(by, cluster, name: str = "scratch-pg", **fields) -> RestoreTarget:
    """A registered PostgreSQL target on the test cluster (trust authentication)."""
    return register(
        by, name=name, kind=SourceKind.POSTGRES, host=cluster.host, port=cluster.port,
        username=cluster.user, **fields,
    )  # fmt: skip


def redis_target(by, server, name: str = "scratch-redis", **fields) -> RestoreTarget:
    return register(by, name=name, kind=SourceKind.REDIS, host="127.0.0.1", port=server.port,
                    **fields)  # fmt: skip


def approve_and_run(capture, req: RestoreRequest, *approvers, confirmation: str = ""):
    """Sign as each approver (the last one queues it), then let a real worker run it."""
    for person in approvers[:-1]:
        actions.approve_restore(req, by=person, confirmation=confirmation)
    with capture(execute=True):
        tally = actions.approve_restore(req, by=approvers[-1], confirmation=confirmation)
    assert tally.complete
    run_jobs()
    req.refresh_from_db()
    return req
