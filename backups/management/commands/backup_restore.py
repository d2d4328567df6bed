"""`manage.py backup_restore`: plan (--dry-run first), confirm, follow a restore.

backup_restore plan ARTIFACT_ID --as alice [--target NAME] [--database DB] --dry-run
backup_restore plan ARTIFACT_ID --as alice --confirm shop
backup_restore plan ARTIFACT_ID --as alice --target dr-cluster --resources configmap/default
backup_restore targets
backup_restore status REQUEST_ID

The target is the backup's own source or a registered restore target, named;
a host, DSN or credential is refused (the same validation as the admin's plan page).

Approving (and rejecting) is not here: it is a person's act in the portal, signed
in as themselves, on the restore's page (the same approval UI as remediations).
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from backups import actions
from backups.management.commands.backup_run import _actor
from backups.models import BackupArtifact, RestoreRequest, RestoreTarget


class Command(BaseCommand):
    help = "Plan, approve and follow restores (the same rules as the admin)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        plan = sub.add_parser("plan", help="plan a restore of one artifact")
        plan.add_argument("artifact", type=int, help="artifact id (see the run's page)")
        plan.add_argument(
            "--target", default="", help="a registered restore target's name (blank: the source)"
        )
        plan.add_argument("--database", default="", help="PostgreSQL: the database to restore into")
        plan.add_argument(
            "--resources", default="", help="Kubernetes: comma-separated KIND[/NAMESPACE[/NAME]]"
        )
        plan.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
        plan.add_argument("--confirm", default="", help="the target's name (overwrites)")
        plan.add_argument("--as", dest="user", required=True)
        status = sub.add_parser("status", help="show a restore request")
        status.add_argument("request", type=int)
        sub.add_parser("list", help="list artifacts one can restore from")
        sub.add_parser("targets", help="list registered restore targets")

    def handle(self, *args, verb, **options):
        try:
            getattr(self, f"_{verb}")(**options)
        except actions.BackupError as exc:
            raise CommandError(exc.message) from None

    def _user(self, name: str):
        user = _actor(name)
        if isinstance(user, str):
            raise CommandError("--as needs a portal user")
        return user

    def _plan(self, artifact, target, database, resources, dry_run, confirm, user, **options):
        given: dict = {}
        if target:
            given["target"] = target.strip()
        if database:
            given["database"] = database.strip()
        if resources:
            given["resources"] = [r.strip() for r in resources.split(",") if r.strip()]
        by = self._user(user)
        req, plan = actions.plan_restore(
            artifact, target=given, by=by, confirmation=confirm, dry_run=dry_run
        )
        self._show_plan(plan)
        if req is None:
            self.stdout.write("Dry run: nothing was changed.")
            if plan["mode"] == "overwrite":
                self.stdout.write(f"To plan it for real, add --confirm {plan['target_name']}.")
            return
        self.stdout.write(self.style.SUCCESS(f"Restore #{req.pk} planned: {req.status}."))
        if req.status == "PLANNED":
            page = f"/admin/backups/restorerequest/{req.pk}/change/"
            if req.mode == "overwrite":
                self.stdout.write(
                    f"Two approvers (not you) now approve it on its page in the portal: "
                    f"{page} (typing {req.target_name})."
                )
            else:
                self.stdout.write(f"An approver (not you) now approves it in the portal: {page}.")

    def _show_plan(self, plan: dict) -> None:
        a = plan["artifact"]
        self.stdout.write(f"From:       artifact #{a['id']} of {a['source']} ({a['component']}, "
                          f"{a['created']}, sha256 {a['sha256'][:16]}…)")  # fmt: skip
        where = plan.get("registered_target") or "the backup's own source"
        self.stdout.write(f"Target:     {plan['target_name']} ({plan['mode']}; {where})")
        if plan["overwrites"]:
            self.stdout.write(self.style.WARNING(f"OVERWRITES: {plan['overwrites']}"))
        if plan["creates"]:
            self.stdout.write(f"Creates:    {plan['creates']}")
        free = plan["free_bytes"]
        free_text = f"{free / 1e6:.1f} MB" if free is not None else "unknown"
        self.stdout.write(
            f"Size:       about {plan['estimated_bytes'] / 1e6:.1f} MB; free {free_text} "
            f"({plan['free_note']})"
        )
        for warning in plan["warnings"]:
            self.stdout.write(self.style.WARNING(f"Warning:    {warning}"))
        self.stdout.write("Steps:      " + " → ".join(plan["steps"]))

    def _status(self, request, **options):
        req = RestoreRequest.objects.filter(pk=request).first()
        if req is None:
            raise CommandError(f"No restore #{request}.")
        self.stdout.write(f"Restore #{req.pk}: {req.status} {req.phase} → {req.target_name}")
        if req.error:
            self.stdout.write(req.error)
        if req.report:
            self.stdout.write(json.dumps(req.report, indent=2))

    def _targets(self, **options):
        for target in RestoreTarget.objects.order_by("name"):
            state = "" if target.enabled else "  (disabled)"
            self.stdout.write(
                f"{target.name:<24} {target.get_kind_display():<22} {target.where}{state}"
            )

    def _list(self, **options):
        for artifact in (
            BackupArtifact.objects.restorable()
            .select_related("run__source")
            .order_by("-run__created")[:50]
        ):
            self.stdout.write(
                f"#{artifact.pk:<6} {artifact.run.source.name:<20} {artifact.component:<20} "
                f"{artifact.run.created:%Y-%m-%d %H:%M} {artifact.bytes_stored / 1e6:8.1f} MB"
            )
