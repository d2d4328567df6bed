"""`manage.py backup_report`: per source and component, the last backup, its size and
verification, the last restore drill and its RTO against the target."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from backups.choices import DRILL_KINDS
from backups.models import BackupDrill, BackupRun, BackupSource
from backups.runner import human_bytes


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "never"


class Command(BaseCommand):
    help = __doc__.split("\n")[0].split(": ", 1)[1]

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="*", help="source names (default: all enabled)")

    def handle(self, *args, sources, **options):
        queryset = BackupSource.objects.filter(enabled=True).select_related("drill_target")
        if sources:
            queryset = BackupSource.objects.filter(name__in=sources).select_related("drill_target")
        header = (f"{'source / component':<32} {'last backup':<16} {'size':>9} "
                  f"{'verified':<22} {'last drill':<16} {'RTO / target':<22}")  # fmt: skip
        self.stdout.write(header)
        for source in queryset.order_by("name"):
            last = BackupRun.objects.of_source(source).stored().order_by("-created").first()
            good = BackupRun.objects.of_source(source).last_good()
            drill = BackupDrill.objects.filter(source=source).exclude(status="QUEUED").first()
            verified = "-"
            if last is not None:
                verified = last.verification + (
                    f" {last.verify_level} {last.verify_seconds or 0:.1f}s"
                    if last.verify_level
                    else ""
                )
                if last.awaiting_acceptance:
                    verified = "SHRANK (not accepted)"
            if drill is None:
                drilled = "no drill target" if not source.drill_target_id else "never"
                if source.kind not in DRILL_KINDS:
                    drilled = "n/a"
                rto = f"- / {source.rto_target:g}s" if source.kind in DRILL_KINDS else "-"
            else:
                drilled = _when(drill.finished_at or drill.started_at)
                if drill.rto_seconds is None:
                    rto = f"{drill.status} / {drill.rto_target_seconds or source.rto_target:g}s"
                else:
                    state = "ok" if drill.met_target else ("OVER" if drill.status == "SUCCEEDED"
                                                           else "FAILED")  # fmt: skip
                    rto = f"{drill.rto_seconds:.1f}s / {drill.rto_target_seconds:g}s {state}"
            self.stdout.write(
                f"{source.name:<32} {_when(last.created if last else None):<16} "
                f"{human_bytes(last.bytes_stored) if last else '-':>9} {verified:<22} "
                f"{drilled:<16} {rto:<22}"
            )
            if verified.startswith("VERIFIED") and last.verify_seconds:
                if last.verify_seconds > settings.BACKUP_VERIFY_TARGET:
                    self.stdout.write(
                        f"    verification took {last.verify_seconds:.0f} s, over its target "
                        f"of {settings.BACKUP_VERIFY_TARGET} s"
                    )
            parts = {p.get("component"): p for p in (drill.report if drill else {}).get(
                "components", [])}  # fmt: skip
            for artifact in last.artifacts.all() if last else []:
                part = parts.get(artifact.component)
                drill_part = (
                    f"restored {part.get('restore_seconds')}s, "
                    f"{'ok' if part.get('ok') else 'MISMATCH'}"
                    if part
                    else ""
                )
                self.stdout.write(
                    f"  {artifact.component:<30} {'':<16} {human_bytes(artifact.bytes_stored):>9} "
                    f"{(artifact.verify_level or '-') + ' ' + artifact.verification:<22} "
                    f"{drill_part}"
                )
            if good is not None and last is not None and good.pk != last.pk:
                self.stdout.write(f"    last good backup: #{good.pk} of {_when(good.created)}")
