"""`manage.py backup_verify [--all] [SOURCE ...]`: verify, report, fail when not fresh."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from backups import jobs
from backups.choices import Verification, VerifyLevel
from backups.models import BackupRun, BackupSource


class Command(BaseCommand):
    help = (
        "Re-verify the newest backup of each source (--all: every stored backup) and print "
        "a report; exit 1 when a source has no fresh verified backup."
    )

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="*", help="source names (default: all enabled)")
        parser.add_argument("--all", action="store_true", help="verify every stored backup")
        parser.add_argument("--no-verify", action="store_true", help="only report what is recorded")
        parser.add_argument(
            "--quick",
            action="store_true",
            help="checksum and table of contents only (never makes a backup VERIFIED)",
        )

    def handle(self, *args, sources, all, no_verify, quick, **options):
        level = VerifyLevel.QUICK if quick else VerifyLevel.FULL
        queryset = (
            BackupSource.objects.all() if sources else BackupSource.objects.filter(enabled=True)
        )
        if sources:
            queryset = queryset.filter(name__in=sources)
            missing = set(sources) - set(queryset.values_list("name", flat=True))
            if missing:
                raise CommandError(f"Unknown source(s): {', '.join(sorted(missing))}")
        now = timezone.now()
        header = f"{'source':<24} {'last success':<20} {'age':>7} {'size':>10}  verified"
        self.stdout.write(header)
        stale, suspect = [], []
        for source in queryset.order_by("name"):
            stored = BackupRun.objects.of_source(source).stored().order_by("-created")
            if not no_verify:
                for run in stored if all else stored[:1]:
                    jobs.verify_run(run.pk, by="system:backup_verify", level=level)
            last = stored.first()
            if last is None:
                self.stdout.write(f"{source.name:<24} {'never':<20} {'-':>7} {'-':>10}  -")
                stale.append(source.name)
                continue
            age = timezone.now() - last.created
            hours = age.total_seconds() / 3600
            verdict = last.verification
            if last.awaiting_acceptance:
                verdict += " (SHRANK: not counted until accepted)"
            elif last.shrink_flag:
                verdict += f" (shrank; accepted by {last.accepted_by})"
            if last.verify_level:
                verdict += f" ({last.verify_level}, {last.verify_seconds or 0:.1f} s)"
            self.stdout.write(
                f"{source.name:<24} {last.created:%Y-%m-%d %H:%M:%S}  {hours:6.1f}h "
                f"{last.bytes_stored / 1e6:9.1f}M  {verdict}"
            )
            if last.verification != Verification.VERIFIED:
                self.stdout.write(f"    {last.verify_detail[:500]}")
            good = BackupRun.objects.of_source(source).last_good()
            if last.awaiting_acceptance:
                suspect.append(source.name)
                where = f"#{good.pk} of {good.created:%Y-%m-%d %H:%M} UTC" if good else "none"
                self.stdout.write(
                    f"    newest backup #{last.pk} is suspiciously small; last good backup: "
                    f"{where}. An approver or administrator accepts it in the admin "
                    "(Backup runs › Accept a suspiciously small backup)."
                )
            fresh = (
                last.verification == Verification.VERIFIED
                and good is not None
                and good.is_fresh(now)
            )
            if not fresh and source.name not in suspect:
                stale.append(source.name)
        problems = []
        if suspect:
            problems.append(
                "Newest backup suspiciously small and not accepted: " + ", ".join(suspect)
            )
        if stale:
            problems.append(
                f"No fresh verified backup (< {settings.BACKUP_FRESH_HOURS} h) for: "
                + ", ".join(stale)
            )
        if problems:
            raise CommandError("; ".join(problems))
