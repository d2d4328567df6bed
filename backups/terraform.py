"""Terraform state kept in an S3-compatible bucket with versioning (issue 14 §2).

A ``terraform`` backup source is one state object. Its ``dsn`` is the object's path-style
URL, with the access key id as the user and the region as a parameter::

    http://ACCESS_KEY_ID@minio.internal:9000/tfstate/prod/terraform.tfstate?region=us-east-1

and its secret key is named like every other secret (``password_env`` /
``password_file``), never stored.

- **Versions**: ``list_versions`` reads the bucket's versions of the object and, for
  each, its serial, lineage and resource count from the state JSON itself.
- **Backups** go through the ordinary pipeline: the "tool" is ``python -m
  backups.s3get`` streaming the object (the current one, a chosen version, or a local
  state file with ``cat``) into compression, encryption and the checksum; verification
  parses the JSON and records serial, lineage and resources as the artifact's facts.
- **Restore** of a version: the version is backed up first (``capture``: verified like
  any backup), then restored through ``backups.actions.plan_restore`` like every other
  artifact, so the HIGH rules apply unchanged (the requester types ``s3://bucket/key``,
  two other people approve, each typing it; a safety backup of the current version runs
  before anything is written). The state is checked at plan time and again just before
  the write: valid JSON, the same lineage unless ``force_lineage``, a serial not going
  backwards unless ``allow_older_serial``; the report shows resources before and after.
  The restored version becomes the new current version (a PUT: the bucket keeps every
  older version, the one replaced included).
- **S3 down**: ``write_local_backend`` writes a backed-up state to a local file with a
  ``backend_override.tf`` pointing Terraform at it; ``return_to_s3`` backs the local
  file up and plans its restore into the bucket, behind the same rules.

Tests run these against moto in server mode on loopback, standing in for MinIO.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings
from django.db import transaction

from backups import faults
from backups.choices import ArtifactFormat, RunStatus, SourceKind, Verification
from backups.models import BackupArtifact, BackupRun, BackupSource
from backups.restore import Credentials, RestoreError, TargetState
from backups.s3 import S3Client, S3Config, _done, _findall, _md5_b64, _text
from backups.sources import Component, SourceError, ToolCommand, read_password
from backups.storage import Storage, StorageError
from backups.streaming import CHUNK, open_plain
from portal.audit import Actor, record
from portal.choices import AuditEventType

COMPONENT = "tfstate"
FILENAME = "terraform.tfstate.zst"
# A state file is JSON read whole; bigger than this is refused rather than read into memory.
MAX_STATE_BYTES = 256 << 20
_VERSION_ID = re.compile(r"^[A-Za-z0-9._+=/-]{1,1024}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY = re.compile(r"^[A-Za-z0-9!_.*'()/+=@,-]{1,1024}$")
OVERRIDE_NAME = "backend_override.tf"
STATE_NAME = "terraform.tfstate"


class StateError(ValueError):
    """Not a usable Terraform state; the message says what is wrong."""


# --- where the state lives ---------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    endpoint: str
    bucket: str
    key: str
    region: str
    access_key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_dsn(dsn: str) -> Location:
    """The object a source names; ``ValueError`` says what is wrong with the URL."""
    parts = urlsplit(dsn or "")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(
            "use the state object's path-style URL: "
            "http(s)://ACCESS_KEY_ID@host:port/bucket/path/terraform.tfstate"
        )
    if parts.password:
        raise ValueError("no secret in the URL: use password_env or password_file")
    bucket, _, key = parts.path.lstrip("/").partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not a bucket name (3-63: a-z, 0-9, '.', '-')")
    key = unquote(key)
    if not _KEY.match(key) or ".." in key.split("/") or key.endswith("/"):
        raise ValueError(f"{key!r} is not an object key (letters, digits, '/', '.', '_', '-')")
    region = (parse_qs(parts.query).get("region") or ["us-east-1"])[0]
    if not re.match(r"^[a-z0-9-]{1,32}$", region):
        raise ValueError(f"{region!r} is not a region name")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    return Location(
        endpoint=f"{parts.scheme}://{netloc}",
        bucket=bucket,
        key=key,
        region=region,
        access_key=unquote(parts.username or ""),
    )


def source_errors(source: BackupSource) -> dict[str, str]:
    """``BackupSource.clean``'s checks of a Terraform source (nothing is contacted)."""
    errors: dict[str, str] = {}
    try:
        parse_dsn(source.dsn)
    except ValueError as exc:
        errors["dsn"] = str(exc)
    if source.transport != "direct":
        errors["transport"] = "a Terraform state is read from its bucket directly"
    if not (source.password_env or source.password_file):
        errors["password_env"] = "name the secret access key (an env var or a file)"  # noqa: S105
    return errors


def client_for(location: Location, secret: str | None) -> S3Client:
    return S3Client(
        S3Config(
            endpoint=location.endpoint,
            bucket=location.bucket,
            region=location.region,
            access_key=location.access_key,
            secret_key=secret or "",
            timeout=float(faults.connect_timeout()),
        )
    )


def source_client(source: BackupSource) -> tuple[S3Client, Location]:
    location = parse_dsn(source.dsn)
    return client_for(location, read_password(source.password_env, source.password_file)), location


# --- the state JSON -----------------------------------------------------------------------


def state_facts(data: bytes) -> dict[str, Any]:
    """Serial, lineage and resource count of a state file; ``StateError`` if it is none."""
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"{len(data)} bytes: larger than {MAX_STATE_BYTES} bytes")
    try:
        state = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(state, dict):
        raise StateError("not a Terraform state (the JSON is not an object)")
    lineage, serial, version = state.get("lineage"), state.get("serial"), state.get("version")
    if not isinstance(lineage, str) or not lineage:
        raise StateError("not a Terraform state: no lineage")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise StateError("not a Terraform state: no serial")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StateError("not a Terraform state: no format version")
    resources = state.get("resources") or []
    if not isinstance(resources, list):
        raise StateError("not a Terraform state: resources is not a list")
    instances = sum(len(r.get("instances") or []) for r in resources if isinstance(r, dict))
    return {
        "serial": serial,
        "lineage": lineage,
        "resources": len(resources),
        "instances": instances,
        "state_version": version,
        "terraform_version": str(state.get("terraform_version") or ""),
        "state_sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _read_all(reader: BinaryIO) -> bytes:
    data = bytearray()
    while chunk := reader.read(CHUNK):
        data += chunk
        if len(data) > MAX_STATE_BYTES:
            raise StateError(f"larger than {MAX_STATE_BYTES} bytes")
    return bytes(data)


def check_state(main: BinaryIO, level: str):
    """Verification of a ``tfstate`` artifact: the whole JSON parsed (states are small)."""
    from backups.verify import Check

    try:
        facts = state_facts(_read_all(main))
    except StateError as exc:
        return Check(False, str(exc))
    return Check(
        True,
        f"Terraform state: serial {facts['serial']}, lineage {facts['lineage']}, "
        f"{facts['resources']} resources",
        facts,
    )


def artifact_bytes(storage: Storage, artifact: BackupArtifact) -> bytes:
    with open_plain(storage.open(artifact.key), artifact) as reader:
        return _read_all(reader)


def version_of(run: BackupRun) -> str:
    """The bucket version a backup read (``s3get`` says it on stderr); blank: a local file."""
    found = re.search(r"version-id: (\S+)", run.stderr or "")
    return found.group(1) if found and found.group(1) != "-" else ""


# --- backups -------------------------------------------------------------------------------


class TerraformTransport:
    """One component, the state: the current object, one chosen version, or a local file."""

    def __init__(self, source: BackupSource, *, version: str = "", local_file: str = "") -> None:
        self.source = source
        self.version = version
        self.local_file = local_file
        try:
            self.location = parse_dsn(source.dsn)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self.password = None if local_file else read_password(
            source.password_env, source.password_file
        )  # fmt: skip

    def components(self) -> list[Component]:
        return [Component(COMPONENT, ArtifactFormat.TFSTATE, FILENAME)]

    def command(self, component: Component) -> ToolCommand:
        if self.local_file:
            return ToolCommand(["cat", "--", self.local_file], label=f"cat {self.local_file}")
        env = {
            "PORTAL_S3_ENDPOINT": self.location.endpoint,
            "PORTAL_S3_BUCKET": self.location.bucket,
            "PORTAL_S3_KEY": self.location.key,
            "PORTAL_S3_REGION": self.location.region,
            "PORTAL_S3_ACCESS_KEY": self.location.access_key,
            "PORTAL_S3_SECRET_KEY": self.password or "",
            "PORTAL_S3_VERSION": self.version,
            "PORTAL_S3_TIMEOUT": str(faults.connect_timeout()),
            "PYTHONPATH": str(settings.BASE_DIR),
        }
        what = self.location.url + (f" version {self.version}" if self.version else "")
        return ToolCommand([sys.executable, "-m", "backups.s3get"], env=env, label=f"GET {what}")


def capture(source: BackupSource, *, by, version: str = "", local_file: str = "") -> BackupRun:
    """Back up one chosen bucket version (or a local state file) now, inline, verified.

    The run is an ordinary manual run (audited, verified, copied, kept by retention);
    what it read is on its stderr (``version-id``) or in its ``requested_by``.
    """
    from backups import actions, jobs

    if source.kind != SourceKind.TERRAFORM:
        raise actions.BackupError("kind", f"{source.name} is not a Terraform state source.")
    if version and not _VERSION_ID.match(version):
        raise actions.BackupError("version", f"{version[:80]!r} is not an S3 version id.")
    if local_file:
        path = Path(local_file)
        if not path.is_absolute() or not path.is_file():
            raise actions.BackupError("file", f"{local_file}: not an absolute path to a file.")
        try:
            state_facts(path.read_bytes())
        except (OSError, StateError) as exc:
            raise actions.BackupError("state", f"{local_file}: {exc}; nothing was done.") from None
        local_file = str(path.resolve())
    run = actions.request_run(source, by=by, enqueue=False)
    what = f"version {version}" if version else (f"file {local_file}" if local_file else "")
    if what:
        BackupRun.objects.filter(pk=run.pk).update(
            requested_by=f"{run.requested_by} ({what})"[:150]
        )
    claimed = actions.claim_run(run.pk, job_id=f"tfstate-capture-{run.pk}")
    if claimed is not None:
        jobs.perform(
            claimed,
            lambda: TerraformTransport(source, version=version, local_file=local_file),
        )
    run.refresh_from_db()
    return run


def _captured_artifact(run: BackupRun) -> BackupArtifact:
    from backups import actions

    if not run.usable:
        raise actions.BackupError(
            "capture",
            f"backup #{run.pk} of the chosen state did not succeed and verify ({run.status}, "
            f"{run.verification}): {(run.error or run.verify_detail)[:500]}",
        )
    return run.artifacts.get(component=COMPONENT)


# --- versions --------------------------------------------------------------------------------


def _bucket_versions(client: S3Client, key: str) -> list[dict]:
    found: list[dict] = []
    marker = version_marker = None
    while True:
        query = {"versions": "", "prefix": key}
        if marker:
            query.update({"key-marker": marker, "version-id-marker": version_marker or ""})
        root = client.xml("GET", query=query)
        for tag in ("Version", "DeleteMarker"):
            for item in _findall(root, tag):
                if _text(item, "Key") != key:
                    continue
                found.append({
                    "version_id": _text(item, "VersionId"),
                    "modified": _text(item, "LastModified"),
                    "size": int(_text(item, "Size", "0")),
                    "latest": _text(item, "IsLatest") == "true",
                    "deleted": tag == "DeleteMarker",
                })  # fmt: skip
        if _text(root, "IsTruncated") != "true":
            break
        marker, version_marker = _text(root, "NextKeyMarker"), _text(root, "NextVersionIdMarker")
    found.sort(key=lambda v: (v["modified"], v["latest"]), reverse=True)
    return found


def get_object(client: S3Client, key: str, version: str = "") -> tuple[bytes | None, str]:
    """The object's bytes (None when it does not exist) and the version id read."""
    query = {"versionId": version} if version else {}
    try:
        response = client.request("GET", key, query=query)
    except StorageError as exc:
        if " 404 " in str(exc):
            return None, ""
        raise
    try:
        data = _read_all(response)
    finally:
        _done(response)
    return data, response.getheader("x-amz-version-id") or ""


def list_versions(source: BackupSource, *, limit: int = 20) -> list[dict]:
    """The newest ``limit`` versions of the state, each read for its serial, lineage and
    resource count, and the portal backup holding the same bytes, if any."""
    client, location = source_client(source)
    if not client.versioning():
        raise StorageError(f"versioning is not enabled on bucket {location.bucket}")
    backed_up = {
        a.facts.get("state_sha256"): a.run_id
        for a in BackupArtifact.objects.filter(
            run__source=source, run__status=RunStatus.SUCCEEDED, run__deleted_at__isnull=True,
            verification=Verification.VERIFIED, format=ArtifactFormat.TFSTATE,
        ).order_by("run__created")
    }  # fmt: skip
    versions = _bucket_versions(client, location.key)[:limit]
    for item in versions:
        if item["deleted"]:
            continue
        data, _ = get_object(client, location.key, item["version_id"])
        try:
            item.update(state_facts(data or b""))
            item["backup_run"] = backed_up.get(item["state_sha256"])
        except StateError as exc:
            item["error"] = str(exc)
    return versions


# --- restore (hooks of backups.restore) -----------------------------------------------------


class TfTarget(Credentials):
    """The state object a restore writes: always the backup's own source's object."""

    endpoint: str
    bucket: str
    key: str
    region: str = "us-east-1"
    access_key: str = ""
    force_lineage: bool = False
    allow_older_serial: bool = False

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def client(self) -> S3Client:
        location = Location(self.endpoint, self.bucket, self.key, self.region, self.access_key)
        return client_for(location, self.password())


def target_for(source: BackupSource, spec) -> TfTarget:
    if spec.target:
        raise RestoreError(
            "a Terraform state is restored into its own object only (no restore target)"
        )
    try:
        location = parse_dsn(source.dsn)
    except ValueError as exc:
        raise RestoreError(f"the source's URL: {exc}") from None
    return TfTarget(
        endpoint=location.endpoint, bucket=location.bucket, key=location.key,
        region=location.region, access_key=location.access_key,
        password_env=source.password_env, password_file=source.password_file,
        force_lineage=spec.force_lineage, allow_older_serial=spec.allow_older_serial,
    )  # fmt: skip


def problems(chosen: dict, current: dict | None, target: TfTarget) -> list[str]:
    """Why writing ``chosen`` over ``current`` is refused (empty: it may go ahead)."""
    if current is None:
        return []
    found = []
    if chosen["lineage"] != current["lineage"] and not target.force_lineage:
        found.append(
            f"lineage {chosen['lineage']} is not the current state's ({current['lineage']}): "
            "another state altogether; force it only if you mean to replace it "
            "(--force-lineage / force_lineage)"
        )
    if chosen["serial"] < current["serial"] and not target.allow_older_serial:
        found.append(
            f"serial {chosen['serial']} is older than the current {current['serial']}: confirm "
            "going back with --allow-older-serial / allow_older_serial (Terraform itself "
            "would need `state push -force`)"
        )
    return found


def _current(target: TfTarget) -> tuple[dict | None, str]:
    try:
        data, version = get_object(target.client(), target.key)
    except StorageError as exc:
        raise RestoreError(
            f"the bucket is unreachable ({exc}); if S3 is down, write the state to a local "
            "backend instead: manage.py tfstate fallback SOURCE --dir DIR"
        ) from None
    if data is None:
        return None, ""
    try:
        return state_facts(data), version
    except StateError as exc:
        # A damaged current object is what a restore is for: shown, never a blocker.
        return {"serial": -1, "lineage": "?", "resources": 0, "damaged": str(exc)}, version


def inspect(target: TfTarget, storage: Storage, artifact: BackupArtifact) -> TargetState:
    chosen = state_facts(artifact_bytes(storage, artifact))
    current, version = _current(target)
    refused = problems(chosen, current, target)
    if refused:
        raise RestoreError("; ".join(refused) + ". Nothing was changed.")
    facts = {
        "chosen": chosen,
        "current": current,
        "current_version": version,
        "resources_before": current["resources"] if current else 0,
        "resources_after": chosen["resources"],
        "lineage_forced": bool(current and chosen["lineage"] != current["lineage"]),
        "serial_back": bool(current and chosen["serial"] < current["serial"]),
    }
    if current is None:
        return TargetState(False, f"{target.name} (no current state: it is created)", facts=facts)
    return TargetState(
        True,
        f"{target.name} version {version or '?'}: serial {current['serial']}, lineage "
        f"{current['lineage']}, {current['resources']} resources",
        free_note="not applicable",
        facts=facts,
    )


def restore_state(target: TfTarget, storage: Storage, artifact: BackupArtifact, mode: str) -> dict:
    """Write the chosen state as the new current version, checking the rules again first
    (the state may have moved since the plan), then read it back."""
    data = artifact_bytes(storage, artifact)
    chosen = state_facts(data)
    current, previous = _current(target)
    refused = problems(chosen, current, target)
    if refused:
        raise RestoreError("; ".join(refused) + ". Nothing was changed.")
    client = target.client()
    try:
        response = client.request(
            "PUT", target.key, body=data,
            headers={"Content-MD5": _md5_b64(data), "Content-Type": "application/json"},
        )  # fmt: skip
        response.read()
        _done(response)
        written = response.getheader("x-amz-version-id") or ""
        back, read_version = get_object(client, target.key)
    except StorageError as exc:
        raise RestoreError(f"writing {target.name} failed: {exc}") from None
    after = state_facts(back) if back else None
    return {
        "component": COMPONENT,
        "target": target.name,
        "ok": back == data and (not written or read_version == written),
        "version_id": written,
        "previous_version": previous,
        "serial_before": current["serial"] if current else None,
        "serial_after": after["serial"] if after else None,
        "lineage": chosen["lineage"],
        "resources_before": current["resources"] if current else 0,
        "resources_after": after["resources"] if after else None,
    }


def safety_source(source: BackupSource, target: TfTarget) -> BackupSource:
    return BackupSource(
        name=source.name, kind=SourceKind.TERRAFORM, dsn=source.dsn,
        password_env=target.password_env, password_file=target.password_file,
    )  # fmt: skip


# --- the procedures ---------------------------------------------------------------------------


def restore_version(
    source: BackupSource,
    version: str,
    *,
    by,
    confirmation: str = "",
    force_lineage: bool = False,
    allow_older_serial: bool = False,
    dry_run: bool = False,
):
    """Back up bucket version ``version``, then plan its restore as the new current state
    (``plan_restore``: the HIGH rules, the checks above). Returns (request, plan, run)."""
    from backups import actions

    run = capture(source, by=by, version=version)
    artifact = _captured_artifact(run)
    req, plan = actions.plan_restore(
        artifact,
        target={"force_lineage": force_lineage, "allow_older_serial": allow_older_serial},
        by=by, confirmation=confirmation, dry_run=dry_run,
    )  # fmt: skip
    return req, plan, run


def return_to_s3(
    source: BackupSource,
    state_file: str,
    *,
    by,
    confirmation: str = "",
    force_lineage: bool = False,
    allow_older_serial: bool = False,
    dry_run: bool = False,
):
    """The way back from the local backend: the local state file is backed up, then its
    restore into the bucket is planned (the same rules, a safety copy of what S3 holds)."""
    from backups import actions

    run = capture(source, by=by, local_file=state_file)
    artifact = _captured_artifact(run)
    req, plan = actions.plan_restore(
        artifact,
        target={"force_lineage": force_lineage, "allow_older_serial": allow_older_serial},
        by=by, confirmation=confirmation, dry_run=dry_run,
    )  # fmt: skip
    return req, plan, run


OVERRIDE = """\
# Written by the Ops Portal (manage.py tfstate fallback) because the S3 backend was down.
# Terraform merges *_override.tf files over the configuration: this replaces the s3
# backend with a local one. Copy it next to the configuration, then
#   terraform init -reconfigure && terraform plan
# To go back: delete this file, run `manage.py tfstate return`, then
#   terraform init -reconfigure
terraform {{
  backend "local" {{
    path = "{path}"
  }}
}}
"""


def write_local_backend(
    source: BackupSource, directory: str, *, by, artifact: BackupArtifact | int | None = None
) -> dict:
    """S3 is down: write a backed-up state (the newest good one unless ``artifact``) to
    ``directory/terraform.tfstate`` and a ``backend_override.tf`` pointing Terraform at it.

    Nothing in the bucket is touched. An existing local state there is never overwritten.
    """
    from backups import actions
    from backups.storage import storage_for

    actor = Actor.of(by)
    if actor.user is not None and not actor.user.has_perm(actions.RUN_PERMISSION):
        raise actions.BackupError("permission", "You are not allowed to write Terraform states.")
    if source.kind != SourceKind.TERRAFORM:
        raise actions.BackupError("kind", f"{source.name} is not a Terraform state source.")
    chosen: BackupArtifact | None
    if artifact is None:
        run = BackupRun.objects.of_source(source).last_good()
        if run is None:
            raise actions.BackupError("none", f"{source.name} has no good backup to write.")
        chosen = run.artifacts.get(component=COMPONENT)
    else:
        pk = artifact.pk if isinstance(artifact, BackupArtifact) else artifact
        chosen = (
            BackupArtifact.objects.select_related("run__source")
            .filter(pk=pk, run__source=source, format=ArtifactFormat.TFSTATE)
            .first()
        )
        if chosen is None or not chosen.run.usable:
            raise actions.BackupError("not_found", f"No good state backup #{pk} of {source.name}.")
    where = Path(directory)
    if not where.is_absolute():
        raise actions.BackupError("dir", f"{directory}: give an absolute directory.")
    state_path, override_path = where / STATE_NAME, where / OVERRIDE_NAME
    for path in (state_path, override_path):
        if path.exists():
            raise actions.BackupError(
                "exists", f"{path} exists: a local state is never overwritten; nothing was done."
            )
    try:
        data = artifact_bytes(storage_for(chosen.run), chosen)
        facts = state_facts(data)
    except (StorageError, StateError, OSError) as exc:
        raise actions.BackupError("read", f"cannot read backup #{chosen.run_id}: {exc}") from None
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    override_path.write_text(OVERRIDE.format(path=state_path))
    if hashlib.sha256(state_path.read_bytes()).hexdigest() != facts["state_sha256"]:
        raise actions.BackupError("write", f"{state_path} does not read back as written.")
    result = {
        "state": str(state_path),
        "override": str(override_path),
        "run": chosen.run_id,
        "artifact": chosen.pk,
        "serial": facts["serial"],
        "lineage": facts["lineage"],
        "resources": facts["resources"],
        "steps": [
            f"cp {override_path} <your Terraform configuration directory>/",
            "terraform init -reconfigure   # now on the local backend",
            "terraform plan                # check before any apply",
            f"when S3 is back: rm <config dir>/{OVERRIDE_NAME}; manage.py tfstate return "
            f"{source.name} --file {state_path} --as YOU --confirm s3://… ; after the two "
            "approvals: terraform init -reconfigure",
        ],
    }
    with transaction.atomic():
        record(
            AuditEventType.TFSTATE_FALLBACK,
            actor=actor,
            subject=source,
            details={k: result[k] for k in ("state", "run", "artifact", "serial", "lineage")},
        )
    return result
