"""A real S3 HTTP server on loopback for the tests: moto in server mode. It stands in for
AWS S3 or MinIO (neither can run here). moto needs botocore, whose python-dateutil pin
conflicts with the portal's lock, so it lives in a virtualenv of its own (var/moto-venv,
created on first use from PyPI, like FIELD-NOTES' schemathesis) and runs as its own process;
the portal talks to it only over HTTP, with its own SigV4 client."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from portal.lib.localservices import free_port, port_answers, wait_until

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VENV = BASE_DIR / "var" / "moto-venv"
MOTO = "moto[server]==5.2.5"


def ensure_moto() -> Path:
    server = VENV / "bin" / "moto_server"
    if not server.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", MOTO],
            check=True,
        )
    return server


class MotoServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(ensure_moto()), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: port_answers("127.0.0.1", self.port), timeout=30, what="moto_server")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self, *, versioning: bool = False, object_lock: bool = False) -> str:
        """A new bucket (versioned / with object lock: one day, governance by default)."""
        from backups.s3 import S3Client, S3Config, _md5_b64

        name = f"bk-{uuid.uuid4().hex[:12]}"
        client = S3Client(S3Config(self.endpoint, name, access_key="test", secret_key="test"))
        headers = {"x-amz-bucket-object-lock-enabled": "true"} if object_lock else {}
        client.xml("PUT", headers=headers)
        if versioning or object_lock:
            client.xml("PUT", query={"versioning": ""}, body=(
                b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
            ))  # fmt: skip
        if object_lock:
            rule = (
                b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>"
                b"<Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>1</Days>"
                b"</DefaultRetention></Rule></ObjectLockConfiguration>"
            )
            client.xml("PUT", query={"object-lock": ""}, body=rule,
                       headers={"Content-MD5": _md5_b64(rule)})  # fmt: skip
        return name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.log.close()
