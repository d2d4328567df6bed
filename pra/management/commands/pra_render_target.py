from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from pra.target import TargetRenderError, parse_public_key, render_target


class Command(BaseCommand):
    help = (
        "Render a target's wrappers (pra-exec, pra-run, pra-diag), sudoers drop-in, "
        "authorized_keys, install.sh and README from the catalog into OUTDIR."
    )

    def add_arguments(self, parser):
        parser.add_argument("outdir", help="Directory to write the files into (created if needed).")
        parser.add_argument("--prefix", default="/usr/local/bin", help="Where the scripts go.")
        parser.add_argument("--log-file", default="/var/log/pra-run.log", help="pra-run's log.")
        parser.add_argument(
            "--path",
            default="/usr/sbin:/usr/bin:/sbin:/bin",
            help="PATH the wrappers run the catalog commands with.",
        )
        parser.add_argument("--user", default="pra", help="SSH user the portal logs in as.")
        parser.add_argument("--exec-pubkey", metavar="FILE", help="Public key of the exec key.")
        parser.add_argument("--diag-pubkey", metavar="FILE", help="Public key of the diag key.")
        parser.add_argument(
            "--connectivity-ports",
            metavar="PORTS",
            help="Comma-separated ports pra-diag's connectivity check may probe, e.g. "
            "22,53,80,443 (default: any; the portal still allows only PRA_CONNECTIVITY_PORTS).",
        )
        parser.add_argument(
            "--no-sudo",
            action="store_true",
            help="pra-exec runs pra-run directly, as the SSH user (no sudoers needed).",
        )

    def handle(self, *args, outdir, prefix, log_file, path, user, no_sudo, **options):
        ports = None
        if options.get("connectivity_ports"):
            try:
                ports = [int(p) for p in options["connectivity_ports"].split(",") if p.strip()]
            except ValueError:
                raise CommandError(
                    "--connectivity-ports takes numbers, e.g. 22,53,80,443"
                ) from None
        keys = {
            label: self._read_key(options[f"{label}_pubkey"], label) for label in ("exec", "diag")
        }
        try:
            written = render_target(
                Path(outdir),
                prefix=prefix,
                log_file=log_file,
                path=path,
                run_user=user,
                exec_pubkey=keys["exec"],
                diag_pubkey=keys["diag"],
                use_sudo=not no_sudo,
                connectivity_ports=ports,
            )
        except TargetRenderError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"Cannot write into {outdir}: {exc.strerror}") from None
        for path_ in written:
            self.stdout.write(f"  {path_}")
        missing = [label for label, key in keys.items() if key is None]
        if missing:
            self.stdout.write(
                self.style.WARNING(
                    f"No {' or '.join(missing)} public key given: authorized_keys has a "
                    "commented placeholder line instead."
                )
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Rendered {len(written)} files into {outdir}; run install.sh there."
            )
        )

    def _read_key(self, filename: str | None, label: str) -> str | None:
        if not filename:
            return None
        try:
            text = Path(filename).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text file"
            raise CommandError(f"Cannot read the {label} public key {filename}: {reason}") from None
        try:
            return parse_public_key(text, label)
        except TargetRenderError as exc:
            raise CommandError(f"{filename}: {exc}") from None
