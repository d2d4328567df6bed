"""Demo data for `make run`: the portal's own Redis as a backup source, with a first run.

The source is the Redis the portal itself uses (``REDIS_URL``), backed up with
``redis-cli --rdb`` like any other: nothing leaves the machine, and the backups
worker of `make run` takes the first run as soon as it starts. Later runs follow
the source's schedule (Redis: 02:15 UTC daily).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

DEMO_SOURCE = "demo-redis"


def seed(stdout) -> None:
    from backups import actions
    from backups.choices import SourceKind, Transport
    from backups.models import BackupRun, BackupSource

    parts = urlsplit(settings.REDIS_URL)
    if parts.scheme != "redis" or parts.password:
        stdout.write(
            "Demo backups: no source (REDIS_URL is not a plain redis:// URL); add one under "
            "Backups › Backup sources."
        )
        return
    dsn = f"redis://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    source = BackupSource.objects.filter(name=DEMO_SOURCE).first()
    if source is None:
        source = actions.create_source(
            by="system:demo", name=DEMO_SOURCE, kind=SourceKind.REDIS,
            transport=Transport.DIRECT, dsn=dsn,
        )  # fmt: skip
    elif source.dsn != dsn:
        # `make run` may start its private Redis on a new port: follow it.
        source = actions.update_source(source, by="system:demo", dsn=dsn)
    first = not BackupRun.objects.filter(source=source).exists()
    if first:
        actions.request_run(source, by="system:demo")
    stdout.write(
        f"Demo backups: source '{DEMO_SOURCE}' (the portal's own Redis at {parts.hostname}:"
        f"{parts.port or 6379})" + (", first run queued for the backups worker." if first else ".")
    )
