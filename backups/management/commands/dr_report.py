"""`manage.py dr_report`: every component of the site with its last good backup, its last
successful restore (drill or real) and the measured restore time against its target; exits
1 when a component has no fresh backup or no fresh restore within its target.

dr_report                      # PostgreSQL, Redis, Kubernetes, Terraform state, VMs/LXCs,
                               # and the MinIO and monitoring rebuilds rehearsed by hand
dr_report --components postgres,redis,terraform
dr_report --json
dr_report --record minio_rebuild --took 480 [--at 2026-12-01T02:30Z] [--by alice] [--note ...]
"""

from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError

from backups import dr


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "never"


class Command(BaseCommand):
    help = "Disaster-recovery readiness per component; exit 1 when one is not ready."

    def add_arguments(self, parser):
        parser.add_argument(
            "--components",
            default=",".join(dr.COMPONENT_KEYS),
            help=f"comma-separated, of {', '.join(dr.COMPONENT_KEYS)} (default: all)",
        )
        parser.add_argument("--json", action="store_true", help="machine-readable")
        parser.add_argument(
            "--record",
            metavar="STEP",
            help=f"record a rehearsed rebuild instead: {', '.join(dr.EXERCISES)}",
        )
        parser.add_argument("--took", metavar="SECONDS", help="with --record: how long it took")
        parser.add_argument("--at", metavar="ISO", help="with --record: when (default: now)")
        parser.add_argument("--by", metavar="USERNAME", help="with --record: who did it")
        parser.add_argument("--note", default="", help="with --record: what was done")

    def handle(self, *args, components, json: bool, record, took, at, by, note, **options):
        if record is not None:
            self._record(record, took, at, by, note)
            return
        wanted = tuple(c.strip() for c in components.split(",") if c.strip())
        unknown = sorted(set(wanted) - set(dr.COMPONENT_KEYS))
        if unknown or not wanted:
            raise CommandError(
                f"unknown component {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(dr.COMPONENT_KEYS)}"
            )
        report = dr.build(components=wanted)
        if json:
            import json as json_mod

            self.stdout.write(json_mod.dumps(report.as_dict(), indent=2))
        else:
            self._table(report)
        if not report.ok:
            raise CommandError(
                f"not ready: {', '.join(report.failing)} (no fresh backup or restore "
                "within target)",
                returncode=1,
            )

    def _record(self, step: str, took: str | None, at: str | None, by: str | None, note: str):
        from datetime import datetime

        from django.contrib.auth.models import User

        from portal.errors import RequestRefused

        try:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", (took or "").strip()):
                raise ValueError(took)
            seconds = float(took or "")
        except ValueError:
            raise CommandError(
                "--took needs the time taken, in seconds (e.g. --took 480)"
            ) from None
        performed_at = None
        if at:
            try:
                performed_at = datetime.fromisoformat(at)
            except ValueError:
                raise CommandError(f"--at: not an ISO time: {at!r}") from None
        user = None
        if by:
            user = User.objects.filter(username=by, is_active=True).first()
            if user is None:
                raise CommandError(f"--by: no active user {by!r}")
        try:
            event = dr.record_exercise(
                step, seconds=seconds, performed_at=performed_at, note=note, by=user or "system:cli"
            )
        except RequestRefused as exc:
            raise CommandError(exc.message) from None
        label, target, _where = dr.EXERCISES[step]
        seconds = event.details["seconds"]  # as stored (to 0.1 s) and as the report judges
        verdict = "within" if seconds <= target else "OVER"
        self.stdout.write(
            f"Recorded: {label} took {seconds:g} s ({verdict} the {target:g} s target), "
            f"audit event #{event.pk}."
        )

    def _table(self, report: dr.Report) -> None:
        self.stdout.write(
            f"Disaster-recovery report, {report.generated:%Y-%m-%d %H:%M} UTC (fresh: backup "
            f"< {report.fresh_hours} h, restore < {report.drill_days} days and within target)"
        )
        self.stdout.write(
            f"{'component / source':<34} {'last good backup':<17} {'verification':<14} "
            f"{'last restore':<28} {'measured / target':<20} state"
        )
        for component in report.components:
            state = "OK" if component.ok else "NOT READY"
            self.stdout.write(f"{component.label:<34} {'':<17} {'':<14} {'':<28} {'':<20} {state}")
            for problem in component.problems:
                self.stdout.write(f"    {problem}")
            for row in component.rows:
                measured = (
                    f"{row.restore_seconds:.1f}s / {row.target_seconds:g}s"
                    if row.restore_seconds is not None
                    else f"- / {row.target_seconds:g}s"
                )
                restored = _when(row.restore_at) + (
                    f" {row.restore_what}" if row.restore_what else ""
                )
                verified = (
                    f"{row.verify_seconds:.1f}s / {report.verify_target}s"
                    if row.verify_seconds is not None
                    else f"- / {report.verify_target}s"
                )
                if not row.has_backups:
                    verified = "n/a"
                backed = _when(row.last_backup) if row.has_backups else "n/a"
                self.stdout.write(
                    f"  {row.name:<32} {backed:<17} {verified:<14} {restored:<28} "
                    f"{measured:<20} {'ok' if not row.problems else 'NOT READY'}"
                )
                for line in row.problems:
                    self.stdout.write(f"      ! {line}")
                for line in row.notes:
                    self.stdout.write(f"      {line}")
        self.stdout.write(
            "Rebuilds rehearsed by hand (record one: dr_report --record STEP --took SECONDS):"
        )
        for step, (label, target, where) in dr.EXERCISES.items():
            self.stdout.write(f"  {step:<32} {label}, target {target / 60:g} min ({where})")
        self.stdout.write(
            f"Verification target: {report.verify_target} s per backup (slower: NOT READY)."
        )
