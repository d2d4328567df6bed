"""`manage.py tfstate`: Terraform state versions in S3-compatible storage (issue 14 §2).

tfstate versions SOURCE [--limit 20] [--json]
tfstate restore SOURCE --version VERSION_ID --as alice --dry-run
tfstate restore SOURCE --version VERSION_ID --as alice --confirm s3://bucket/key
        [--force-lineage] [--allow-older-serial]
tfstate fallback SOURCE --dir /srv/tf-local --as alice [--artifact ID]     (S3 is down)
tfstate return SOURCE --file /srv/tf-local/terraform.tfstate --as alice --confirm s3://…

A restore (and the return to S3) backs the chosen state up first, then plans its restore
through the same rules as every restore: two approvers (not the requester) approve it on
its page in the portal, each typing the object's name; a safety backup of the current
version runs before it is written.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from backups import actions, terraform
from backups.management.commands.backup_restore import Command as RestoreCommand
from backups.management.commands.backup_run import _actor
from backups.models import BackupSource
from backups.sources import SourceError
from backups.storage import StorageError


class Command(BaseCommand):
    help = "Terraform state versions: list, restore one, fall back to a local backend, return."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        versions = sub.add_parser("versions", help="list the state's versions in the bucket")
        versions.add_argument("source")
        versions.add_argument("--limit", type=int, default=20)
        versions.add_argument("--json", action="store_true")
        verbs = (
            ("restore", "restore a bucket version as the current state"),
            ("return", "S3 is back: restore the local state into the bucket"),
        )
        for name, text in verbs:
            verb = sub.add_parser(name, help=text)
            verb.add_argument("source")
            if name == "restore":
                verb.add_argument("--version", required=True, help="the S3 version id")
            else:
                verb.add_argument("--file", required=True, help="the local terraform.tfstate")
            verb.add_argument("--as", dest="user", required=True)
            verb.add_argument("--confirm", default="", help="the object's name, s3://bucket/key")
            verb.add_argument("--force-lineage", action="store_true")
            verb.add_argument("--allow-older-serial", action="store_true")
            verb.add_argument("--dry-run", action="store_true", help="plan only, change nothing")
        fallback = sub.add_parser("fallback", help="S3 is down: write a state to a local backend")
        fallback.add_argument("source")
        fallback.add_argument("--dir", required=True, help="an absolute directory")
        fallback.add_argument("--artifact", type=int, help="default: the newest good backup")
        fallback.add_argument("--as", dest="user", required=True)

    def handle(self, *args, verb, source, **options):
        found = BackupSource.objects.filter(name=source, kind="terraform").first()
        if found is None:
            raise CommandError(f"No Terraform state source {source!r}.")
        try:
            getattr(self, f"_{verb}")(found, **options)
        except actions.BackupError as exc:
            raise CommandError(exc.message) from None
        except (StorageError, SourceError) as exc:
            raise CommandError(str(exc)) from None

    def _user(self, name: str):
        user = _actor(name)
        if isinstance(user, str):
            raise CommandError("--as needs a portal user")
        return user

    def _versions(self, source, limit, json, **options):
        import json as json_mod

        versions = terraform.list_versions(source, limit=limit)
        if json:
            self.stdout.write(json_mod.dumps(versions, indent=2))
            return
        self.stdout.write(f"{'version id':<40} {'modified':<25} {'size':>8} {'serial':>6} "
                          f"{'resources':>9}  lineage / backup")  # fmt: skip
        for v in versions:
            mark = "*" if v["latest"] else " "
            if v["deleted"]:
                self.stdout.write(f"{mark}{v['version_id']:<39} {v['modified']:<25} (deleted)")
                continue
            if "error" in v:
                self.stdout.write(f"{mark}{v['version_id']:<39} {v['modified']:<25} {v['error']}")
                continue
            backup = f"  backup #{v['backup_run']}" if v.get("backup_run") else ""
            self.stdout.write(
                f"{mark}{v['version_id']:<39} {v['modified']:<25} {v['size']:>8} "
                f"{v['serial']:>6} {v['resources']:>9}  {v['lineage']}{backup}"
            )
        self.stdout.write("* current version")

    def _plan_out(self, req, plan, run) -> None:
        self.stdout.write(f"Backed up as run #{run.pk} ({run.verification}).")
        facts = plan["facts"]
        before = facts.get("current") or {}
        self.stdout.write(
            f"State:      serial {before.get('serial', '-')} → {facts['chosen']['serial']}, "
            f"resources {facts['resources_before']} → {facts['resources_after']}, lineage "
            f"{facts['chosen']['lineage']}"
            + (" (CHANGED, forced)" if facts["lineage_forced"] else "")
        )
        shower = RestoreCommand()
        shower.stdout, shower.style = self.stdout, self.style
        shower._show_plan(plan)
        if req is None:
            self.stdout.write("Dry run: nothing was restored.")
            if plan["mode"] == "overwrite":
                self.stdout.write(f"To plan it for real, add --confirm {plan['target_name']}.")
            return
        self.stdout.write(self.style.SUCCESS(f"Restore #{req.pk} planned: {req.status}."))
        self.stdout.write(
            f"Two approvers (not you) now approve it on its page in the portal: "
            f"/admin/backups/restorerequest/{req.pk}/change/ (typing {req.target_name})."
        )

    def _restore(self, source, version, user, confirm, force_lineage, allow_older_serial,
                 dry_run, **options):  # fmt: skip
        req, plan, run = terraform.restore_version(
            source, version, by=self._user(user), confirmation=confirm,
            force_lineage=force_lineage, allow_older_serial=allow_older_serial, dry_run=dry_run,
        )  # fmt: skip
        self._plan_out(req, plan, run)

    def _return(self, source, file, user, confirm, force_lineage, allow_older_serial,
                dry_run, **options):  # fmt: skip
        req, plan, run = terraform.return_to_s3(
            source, file, by=self._user(user), confirmation=confirm,
            force_lineage=force_lineage, allow_older_serial=allow_older_serial, dry_run=dry_run,
        )  # fmt: skip
        self._plan_out(req, plan, run)

    def _fallback(self, source, dir, artifact, user, **options):
        result = terraform.write_local_backend(source, dir, by=self._user(user), artifact=artifact)
        self.stdout.write(
            f"Wrote {result['state']} (backup #{result['run']}: serial {result['serial']}, "
            f"lineage {result['lineage']}, {result['resources']} resources) and "
            f"{result['override']}."
        )
        self.stdout.write("Next:")
        for step in result["steps"]:
            self.stdout.write(f"  {step}")
        self.stdout.write(json.dumps({"state": result["state"]}))
