"""`python -m backups.s3get`: stream one S3 object (or one version of it) to stdout.

The backup of a Terraform state runs this as its "tool", so the object goes through the
same pipeline as pg_dump's output (watchdog, compression, encryption, checksum). It needs
no Django: everything comes from the environment, the secret key too (never argv), and
the version actually read is reported on stderr as ``version-id: …``.

PORTAL_S3_ENDPOINT, PORTAL_S3_BUCKET, PORTAL_S3_KEY, PORTAL_S3_REGION,
PORTAL_S3_ACCESS_KEY, PORTAL_S3_SECRET_KEY, PORTAL_S3_VERSION (blank: the current one),
PORTAL_S3_TIMEOUT (seconds).
"""

from __future__ import annotations

import os
import sys

from backups.s3 import S3Client, S3Config, _done
from backups.storage import StorageError

CHUNK = 1 << 20


def main() -> int:
    env = os.environ
    try:
        client = S3Client(
            S3Config(
                endpoint=env["PORTAL_S3_ENDPOINT"],
                bucket=env["PORTAL_S3_BUCKET"],
                region=env.get("PORTAL_S3_REGION") or "us-east-1",
                access_key=env.get("PORTAL_S3_ACCESS_KEY", ""),
                secret_key=env.get("PORTAL_S3_SECRET_KEY", ""),
                timeout=float(env.get("PORTAL_S3_TIMEOUT") or 30),
            )
        )
        version = env.get("PORTAL_S3_VERSION", "")
        query = {"versionId": version} if version else {}
        response = client.request("GET", env["PORTAL_S3_KEY"], query=query)
    except (KeyError, ValueError, StorageError) as exc:
        print(f"s3get: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"version-id: {response.getheader('x-amz-version-id') or '-'}", file=sys.stderr)
        out = sys.stdout.buffer
        while data := response.read(CHUNK):
            out.write(data)
        out.flush()
    except OSError as exc:
        print(f"s3get: reading the object failed: {exc}", file=sys.stderr)
        return 3
    finally:
        _done(response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
