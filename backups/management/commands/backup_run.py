"""`manage.py backup_run SOURCE`: back a source up now, with a progress bar."""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from backups import actions, jobs
from backups.choices import RunStatus
from backups.models import BackupRun


class Command(BaseCommand):
    help = "Back up a source now (in this process, or --enqueue for the workers)."

    def add_arguments(self, parser):
        parser.add_argument("source", help="backup source name")
        parser.add_argument("--enqueue", action="store_true", help="queue it for a worker")
        parser.add_argument("--as", dest="user", default="", help="act as this portal user")

    def handle(self, *args, source, enqueue, user, **options):
        actor = _actor(user)
        try:
            run = actions.request_run(source, by=actor, enqueue=enqueue)
        except actions.BackupError as exc:
            raise CommandError(exc.message) from None
        if enqueue:
            self.stdout.write(f"Backup #{run.pk} of {source} queued.")
            return
        claimed = actions.claim_run(run.pk, job_id=f"cli-{run.pk}")
        if claimed is None:
            raise CommandError(f"Backup #{run.pk} was taken by a worker.")
        bar = ProgressBar(sys.stderr, expected=_expected_size(claimed))
        result = jobs.perform(claimed, on_progress=bar.update)
        run.refresh_from_db()
        bar.done(run.bytes_raw)
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"Backup #{run.pk} FAILED: {run.error}\n{run.stderr[-2000:]}")
        self.stdout.write(
            f"Backup #{run.pk} of {source}: {result}, {run.bytes_raw / 1e6:.1f} MB → "
            f"{run.bytes_stored / 1e6:.1f} MB in {run.duration_s:.1f}s, "
            f"verification {run.verification}, {run.artifact_path}"
        )
        if run.verification != "VERIFIED":
            raise CommandError(f"verification failed:\n{run.verify_detail}")
        if run.awaiting_acceptance:
            raise CommandError(
                f"Backup #{run.pk} is suspiciously small: it does not count as a good backup "
                f"until an approver or administrator accepts it.\n{run.verify_detail}"
            )


def _actor(username: str):
    if not username:
        return "system:cli"
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"No active user {username!r}.")
    return user


def _expected_size(run: BackupRun) -> int | None:
    previous = BackupRun.objects.size_reference(run)
    return previous.bytes_raw if previous else None


class ProgressBar:
    """A one-line progress bar (sized from the previous backup, when there is one)."""

    def __init__(self, out, expected: int | None, width: int = 30) -> None:
        self.out, self.expected, self.width = out, expected, width
        self.started = time.monotonic()

    def _line(self, raw: int) -> str:
        rate = raw / max(time.monotonic() - self.started, 1e-6) / 1e6
        if self.expected:
            share = min(raw / self.expected, 1.0)
            filled = int(share * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            return f"\r[{bar}] {share:4.0%} {raw / 1e6:8.1f} MB {rate:6.1f} MB/s"
        return f"\r{raw / 1e6:8.1f} MB {rate:6.1f} MB/s"

    def update(self, raw: int) -> None:
        self.out.write(self._line(raw))
        self.out.flush()

    def done(self, raw: int) -> None:
        if self.expected:
            self.expected = max(raw, 1)
        self.out.write(self._line(raw) + "\n")
        self.out.flush()
