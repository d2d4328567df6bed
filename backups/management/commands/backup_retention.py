"""`manage.py backup_retention [--dry-run] [SOURCE ...]`: apply retention now."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from backups import actions
from backups.models import BackupRun, BackupSource


class Command(BaseCommand):
    help = "Delete backups past their source's retention (never the newest verified one)."

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="*")
        parser.add_argument("--dry-run", action="store_true", help="list, delete nothing")

    def handle(self, *args, sources, dry_run, **options):
        queryset = BackupSource.objects.all()
        if sources:
            queryset = queryset.filter(name__in=sources)
            if queryset.count() != len(set(sources)):
                raise CommandError("Unknown source name.")
        for source in queryset.order_by("name"):
            result = actions.apply_retention(source, dry_run=dry_run, by="system:cli")
            verb = "would delete" if dry_run else "deleted"
            self.stdout.write(
                f"{source.name}: keeping {len(result.keep)}, {verb} {len(result.delete)} "
                f"(keep {source.retention} days, {source.keep_weekly} weekly, "
                f"{source.keep_monthly} monthly)"
            )
            for run in BackupRun.objects.filter(pk__in=result.delete).order_by("created"):
                self.stdout.write(
                    f"  {verb} #{run.pk} {run.created:%Y-%m-%d %H:%M} {run.artifact_path} "
                    f"({run.bytes_stored / 1e6:.1f} MB)"
                )
