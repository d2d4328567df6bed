"""`manage.py backup_drill SOURCE`: a restore drill now, in this process, with a progress bar."""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from backups import actions, jobs
from backups.management.commands.backup_run import _actor


class StepBar:
    """``[#####-----] 1/2 restoring shop 3.1 s`` on one line."""

    def __init__(self, out, width: int = 20) -> None:
        self.out, self.width = out, width
        self.started = time.monotonic()

    def update(self, what: str, done: int, total: int) -> None:
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.started
        self.out.write(f"\r[{bar}] {done}/{total} {what:<40.40} {elapsed:6.1f} s")
        self.out.flush()
        if what == "done":
            self.out.write("\n")


class Command(BaseCommand):
    help = (
        "Restore the newest good backup of SOURCE into its drill target now, validate and time "
        "it; exit 1 when the drill fails or misses its RTO target."
    )

    def add_arguments(self, parser):
        parser.add_argument("source", help="backup source name")
        parser.add_argument("--as", dest="user", default="", help="act as this portal user")

    def handle(self, *args, source, user, **options):
        try:
            drill = actions.request_drill(source, by=_actor(user), enqueue=False)
        except actions.BackupError as exc:
            raise CommandError(exc.message) from None
        claimed = actions.claim_drill(drill.pk, job_id=f"cli-drill-{drill.pk}")
        if claimed is None:
            raise CommandError(f"Drill #{drill.pk} was taken by a worker.")
        result = jobs.perform_drill(claimed, StepBar(sys.stderr).update)
        drill.refresh_from_db()
        for part in drill.report.get("components", []):
            self.stdout.write(
                f"  {part.get('component')}: restored in {part.get('restore_seconds')} s, "
                f"validated in {part.get('validate_seconds')} s, "
                f"{'ok' if part.get('ok') else 'MISMATCH'}"
            )
        if drill.error or not drill.report.get("ok"):
            raise CommandError(f"Drill #{drill.pk} of {source} FAILED: {drill.error}")
        self.stdout.write(
            f"Drill #{drill.pk} of {source}: {result}, backup #{drill.run_id} restored in "
            f"{drill.rto_seconds:.1f} s (RTO target {drill.rto_target_seconds:g} s)"
        )
        if not drill.met_target:
            raise CommandError(
                f"Drill #{drill.pk} took {drill.rto_seconds:.1f} s, over its RTO target of "
                f"{drill.rto_target_seconds:g} s"
            )
