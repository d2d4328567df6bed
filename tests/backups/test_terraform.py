"""Terraform state versions in a versioned bucket (issue 14 §2), against a real S3 HTTP
server on loopback: moto in server mode, standing in for MinIO (see s3server.py). The
backup's tool is the real ``python -m backups.s3get`` subprocess; restores go through the
real approval path and a real RQ worker. "S3 down" is a TCP gate in front of moto whose
listening socket is closed (connection refused, as when MinIO's host is gone) and
reopened on the same port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from backups import actions, terraform
from backups.choices import RestoreStatus, RunStatus, SourceKind, Verification
from backups.models import BackupRun, RestoreRequest
from backups.s3 import S3Client, S3Config, _done
from tests.backups.helpers import backup_now, make_source, trail
from tests.backups.restoring import approve_and_run
from tests.backups.s3server import MotoServer

pytestmark = pytest.mark.django_db
KEY = "prod/network/terraform.tfstate"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto-tf") / "moto.log")
    yield server
    server.stop()


class Gate:
    """A TCP forwarder to ``port`` that can be taken down (refusing) and brought back."""

    def __init__(self, port: int) -> None:
        self.target = port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.sock: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(32)
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def state(serial: int, resources: int, lineage: str = "lin-aaaa") -> bytes:
    return json.dumps({
        "version": 4, "terraform_version": "1.7.5", "serial": serial, "lineage": lineage,
        "outputs": {},
        "resources": [
            {"mode": "managed", "type": "proxmox_virtual_environment_vm", "name": f"vm{i}",
             "provider": "provider[\"registry.terraform.io/bpg/proxmox\"]",
             "instances": [{"schema_version": 0, "attributes": {"vm_id": 100 + i}}]}
            for i in range(resources)
        ],
    }, indent=2).encode()  # fmt: skip


def put(client: S3Client, data: bytes) -> str:
    response = client.request("PUT", KEY, body=data)
    response.read()
    _done(response)
    version = response.getheader("x-amz-version-id")
    assert version, "a versioned bucket answers a version id"
    return version


def current(client: S3Client) -> bytes:
    data, _ = terraform.get_object(client, KEY)
    assert data is not None, "the state object exists"
    return data


@pytest.fixture
def bucket(moto, monkeypatch):
    """A versioned bucket holding three versions of a state (serials 1, 2, 3)."""
    monkeypatch.setenv("TF_S3_SECRET", "test")
    name = moto.bucket(versioning=True)
    client = S3Client(S3Config(moto.endpoint, name, access_key="test", secret_key="test"))
    versions = [put(client, state(n, n)) for n in (1, 2, 3)]
    return client, name, versions


def tf_source(endpoint: str, bucket: str, name: str = "tf-prod"):
    host = endpoint.removeprefix("http://")
    return make_source(
        name, SourceKind.TERRAFORM, dsn=f"http://test@{host}/{bucket}/{KEY}",
        password_env="TF_S3_SECRET",
    )  # fmt: skip


def test_it_lists_versions_with_serial_lineage_and_resources(moto, bucket, operator, capture):
    client, name, versions = bucket
    source = tf_source(moto.endpoint, name)
    run = backup_now(source, operator, capture)
    assert run.verification == Verification.VERIFIED, (run.error, run.verify_detail)
    listed = terraform.list_versions(source)
    assert [v["version_id"] for v in listed] == versions[::-1]
    assert [(v["serial"], v["resources"], v["latest"]) for v in listed] == [
        (3, 3, True), (2, 2, False), (1, 1, False)
    ]  # fmt: skip
    assert {v["lineage"] for v in listed} == {"lin-aaaa"}
    assert listed[0]["size"] == len(state(3, 3))
    # The current version is the one the scheduled-style backup read and holds.
    assert listed[0]["backup_run"] == run.pk and listed[1]["backup_run"] is None
    assert terraform.version_of(run) == versions[2]
    facts = run.artifacts.get().facts
    assert (facts["serial"], facts["resources"], facts["lineage"]) == (3, 3, "lin-aaaa")


def test_a_version_round_trip_behind_the_high_rules(
    moto, bucket, operator, approver, approver2, capture
):
    client, name, versions = bucket
    source = tf_source(moto.endpoint, name)
    target = f"s3://{name}/{KEY}"
    # Going back to serial 1 needs the explicit confirmation of the older serial.
    with pytest.raises(actions.BackupError, match="older than the current 3"):
        terraform.restore_version(source, versions[0], by=operator, confirmation=target)
    assert not RestoreRequest.objects.exists()
    with pytest.raises(actions.BackupError, match="Type its name"):
        terraform.restore_version(
            source, versions[0], by=operator, allow_older_serial=True, confirmation="prod"
        )
    _, plan, _ = terraform.restore_version(
        source, versions[0], by=operator, allow_older_serial=True, dry_run=True
    )
    assert plan["mode"] == "overwrite" and plan["target_name"] == target
    out = StringIO()
    call_command("tfstate", "versions", "tf-prod", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith(f"*{versions[2]}") and " 3 " in lines[1]
    call_command("tfstate", "restore", "tf-prod", "--version", versions[0], "--as",
                 operator.username, "--allow-older-serial", "--dry-run", stdout=out)  # fmt: skip
    assert "serial 3 → 1, resources 3 → 1" in out.getvalue()
    assert f"add --confirm {target}" in out.getvalue()
    assert (plan["facts"]["resources_before"], plan["facts"]["resources_after"]) == (3, 1)
    with capture(execute=True):
        req, plan, run = terraform.restore_version(
            source, versions[0], by=operator, allow_older_serial=True, confirmation=target
        )
    assert run.usable and "version" in run.requested_by
    assert current(client) == state(3, 3)  # nothing written before the approvals
    with pytest.raises(actions.BackupError):  # a HIGH restore: the approver types the name
        actions.approve_restore(req, by=approver, confirmation="nope")
    req = approve_and_run(capture, req, approver, approver2, confirmation=target)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert current(client) == state(1, 1)
    report = req.report
    assert (report["serial_before"], report["serial_after"]) == (3, 1)
    assert (report["resources_before"], report["resources_after"]) == (3, 1)
    assert report["previous_version"] == versions[2] and report["version_id"]
    # The safety copy is a verified backup of the version that was current before.
    safety = BackupRun.objects.get(pk=report["safety_run"])
    assert safety.usable and safety.artifacts.get().facts["serial"] == 3
    assert terraform.version_of(safety) == versions[2]
    listed = terraform.list_versions(source)
    assert len(listed) == 4 and listed[0]["serial"] == 1 and listed[0]["latest"]
    assert "SAFETY_BACKUP" in trail(req) and "RESTORE_SUCCEEDED" in trail(req)


def test_another_lineage_is_refused_unless_forced(moto, bucket, operator, approver, approver2,
                                                  capture):  # fmt: skip
    client, name, versions = bucket
    source = tf_source(moto.endpoint, name)
    target = f"s3://{name}/{KEY}"
    other = put(client, state(9, 5, lineage="lin-other"))
    put(client, state(4, 4))  # the current state is back to the first lineage
    with pytest.raises(actions.BackupError, match="lineage lin-other is not the current"):
        terraform.restore_version(source, other, by=operator, confirmation=target)
    assert not RestoreRequest.objects.exists()
    with capture(execute=True):
        req, plan, _ = terraform.restore_version(
            source, other, by=operator, confirmation=target, force_lineage=True
        )
    assert plan["facts"]["lineage_forced"]
    # Before it runs, the current state moves on; the rules are checked again at run time
    # and hold (the lineage is forced), so it writes the chosen state.
    put(client, state(5, 4))
    req = approve_and_run(capture, req, approver, approver2, confirmation=target)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert current(client) == state(9, 5, lineage="lin-other")


def test_the_rules_are_checked_again_when_it_runs(moto, bucket, operator, approver, approver2,
                                                  capture):  # fmt: skip
    client, name, versions = bucket
    source = tf_source(moto.endpoint, name)
    target = f"s3://{name}/{KEY}"
    put(client, state(4, 4))
    with capture(execute=True):
        req, _, _ = terraform.restore_version(
            source, versions[2], by=operator, confirmation=target, allow_older_serial=True
        )
    replaced = state(1, 7, lineage=f"lin-{uuid.uuid4().hex[:6]}")
    put(client, replaced)  # someone pushed another state altogether meanwhile
    req = approve_and_run(capture, req, approver, approver2, confirmation=target)
    assert req.status == RestoreStatus.FAILED
    assert "lineage" in req.error and "Nothing was changed" in req.error
    assert current(client) == replaced


def test_bad_input_changes_nothing(moto, bucket, operator, tmp_path):
    client, name, versions = bucket
    source = tf_source(moto.endpoint, name)
    with pytest.raises(actions.BackupError, match="not an S3 version id"):
        terraform.restore_version(source, "v1; rm -rf /", by=operator)
    bad = tmp_path / "bad.tfstate"
    bad.write_text("{not json")
    with pytest.raises(actions.BackupError, match="not valid JSON"):
        terraform.return_to_s3(source, str(bad), by=operator)
    assert not BackupRun.objects.exists()
    with pytest.raises(actions.BackupError, match="did not succeed.*NoSuchVersion"):
        terraform.restore_version(source, "0" * 32, by=operator)  # no such version
    assert not RestoreRequest.objects.exists()
    assert BackupRun.objects.get().status == RunStatus.FAILED
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="no secret in the URL"):
        make_source("tf-bad", SourceKind.TERRAFORM, dsn=f"http://a:b@h/{name}/k",
                    password_env="X")  # fmt: skip


def test_s3_down_fallback_to_a_local_backend_and_back(
    moto, bucket, operator, approver, approver2, capture, tmp_path
):
    client, name, versions = bucket
    gate = Gate(moto.port)
    source = tf_source(f"http://127.0.0.1:{gate.port}", name)
    target = f"s3://{name}/{KEY}"
    good = backup_now(source, operator, capture)
    assert good.usable
    gate.down()
    try:
        with pytest.raises(Exception, match="refused|failed"):
            terraform.list_versions(source)
        failed = backup_now(source, operator, capture)
        assert failed.status == RunStatus.FAILED and failed.failure_cause
        local = tmp_path / "tf-local"
        call_command("tfstate", "fallback", "tf-prod", "--dir", str(local), "--as",
                     operator.username)  # fmt: skip
        assert (local / "terraform.tfstate").read_bytes() == state(3, 3)
        assert (local / "terraform.tfstate").stat().st_mode & 0o077 == 0
        override = (local / "backend_override.tf").read_text()
        assert 'backend "local"' in override and str(local / "terraform.tfstate") in override
        assert "TFSTATE_FALLBACK" in trail(source)
        with pytest.raises(CommandError, match="never overwritten"):
            call_command("tfstate", "fallback", "tf-prod", "--dir", str(local), "--as",
                         operator.username)  # fmt: skip
        # Terraform works on the local backend meanwhile: serial 4, one more resource.
        (local / "terraform.tfstate").write_bytes(state(4, 4))
        with pytest.raises(actions.BackupError, match="unreachable"):
            terraform.return_to_s3(source, str(local / "terraform.tfstate"), by=operator,
                                   confirmation=target)  # fmt: skip
    finally:
        gate.up()
    with capture(execute=True):
        req, plan, run = terraform.return_to_s3(
            source, str(local / "terraform.tfstate"), by=operator, confirmation=target
        )
    assert terraform.version_of(run) == "" and "file" in run.requested_by
    assert plan["facts"]["current"]["serial"] == 3 and plan["facts"]["chosen"]["serial"] == 4
    req = approve_and_run(capture, req, approver, approver2, confirmation=target)
    assert req.status == RestoreStatus.SUCCEEDED, req.error
    assert current(client) == state(4, 4)
    assert len(terraform.list_versions(source)) == 4
