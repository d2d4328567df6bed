"""Shared pieces of the backup tests."""

from __future__ import annotations

from backups.choices import SourceKind
from backups.models import BackupRun, BackupSource
from portal.models import AuditEvent
from tests import jobs as shared
from tests.factories import make_source


def run_jobs() -> None:
    """Drain the backups queue (``tests.jobs.run_jobs``)."""
    shared.run_jobs("backups")


def pg_source(name: str, dsn: str, databases: str, **fields) -> BackupSource:
    return make_source(name, SourceKind.POSTGRES, dsn=dsn, databases=databases, **fields)


def backup_now(source: BackupSource, by, capture) -> BackupRun:
    """Run now, as the admin would, then let a real worker do it.

    ``capture`` is pytest-django's ``django_capture_on_commit_callbacks``: the
    test's transaction never commits, so the enqueue-on-commit runs at its exit.
    """
    from backups import actions

    with capture(execute=True):
        run = actions.request_run(source, by=by)
    run_jobs()
    run.refresh_from_db()
    return run


def plan_now(capture, artifact, **kwargs):
    from backups import actions

    with capture(execute=True):
        return actions.plan_restore(artifact, **kwargs)


def trail(obj) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type=obj._meta.label_lower, subject_id=str(obj.pk))
        .order_by("id")
        .values_list("event_type", flat=True)
    )


def read_plain(artifact) -> bytes:
    """What the tool wrote, read back from the stored artifact (small test backups only)."""
    from backups.storage import get_storage
    from backups.streaming import open_plain

    with open_plain(get_storage().open(artifact.key), artifact) as reader:
        return reader.read()


def store_plain(artifact, tmp_path, data: bytes) -> None:
    """Replace an artifact's stored file by ``data`` written the way the product writes it
    (compressed, encrypted when on), with its checksum and size recorded: a file whose
    checksum matches, so only a format check can tell what is wrong with its content."""
    from django.conf import settings

    from backups.models import BackupArtifact
    from backups.streaming import compress_stream, store_options

    source = tmp_path / f"plain-{artifact.pk}"
    source.write_bytes(data)
    path = settings.BACKUP_STORAGE_DIR / artifact.key
    path.unlink()
    with open(source, "rb") as raw, open(path, "xb") as out:
        result = compress_stream(raw, out, **store_options())
    BackupArtifact.objects.filter(pk=artifact.pk).update(
        sha256=result.sha256, bytes_stored=result.bytes_stored, **result.recorded()
    )


def dump_of(run):
    """The per-database dump of a PostgreSQL run (the other artifact holds its globals)."""
    return run.artifacts.get(format="pg_custom")
