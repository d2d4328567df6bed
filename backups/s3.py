"""An S3-compatible storage for backups (issue 13 §7): the ``Storage`` interface on a bucket.

No SDK: a small client signs requests itself (AWS Signature V4, path-style URLs),
so it works with AWS S3, MinIO, Ceph and the like and adds no dependency.

- **Writing** streams: each file is a multipart upload of ``BACKUP_S3_PART_MB``
  parts (one part in memory at a time), each sent with its ``Content-MD5`` (which
  buckets with object lock require). After the upload completes, the object's
  ETag is compared with the one computed from the parts' MD5s and its size with
  the bytes sent; any difference fails the run.
- **Committing** uploads ``MANIFEST.json`` last: a run without one is never
  listed (S3 has no rename; an upload that died leaves objects nobody lists, and
  the sweeper aborts stale multipart uploads and removes such leftovers).
- **Deleting** a run removes its manifest first, then its objects; in a
  versioned bucket every version this portal wrote is deleted by version id, so
  retention frees the space. A version the bucket's object lock still protects
  cannot be deleted: the deletion fails, naming it and its retain-until date,
  and the files stay until the lock expires.

Everything read back (verification, restores) streams from ``GET``.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import hashlib
import hmac
import http.client
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from backups.storage import INCOMPLETE, MANIFEST, StorageError, _check_key

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _parse(data: bytes) -> ET.Element:
    # The configured endpoint's answers. ElementTree resolves no external entities, and the
    # expat it uses (>= 2.4) bounds entity expansion.
    return ET.fromstring(data)  # noqa: S314


def _find(node: ET.Element, name: str) -> ET.Element | None:
    found = node.find(_NS + name)
    return found if found is not None else node.find(name)


def _findall(node: ET.Element, name: str) -> list[ET.Element]:
    return node.findall(_NS + name) or node.findall(name)


def _text(node: ET.Element, name: str, default: str = "") -> str:
    found = _find(node, name)
    return found.text or default if found is not None else default


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # http(s)://host[:port]
    bucket: str
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""
    prefix: str = ""
    part_bytes: int = 8 << 20
    timeout: float = 60.0


class S3Client:
    """The handful of S3 calls a backup store needs, signed with SigV4."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        parts = urlsplit(config.endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise StorageError(f"BACKUP_S3_ENDPOINT {config.endpoint!r} is not an http(s) URL")
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.host_header = parts.netloc

    # --- signing -----------------------------------------------------------------------

    def _sign(self, method: str, path: str, query: dict, headers: dict, payload_hash: str):
        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers.update({"host": self.host_header, "x-amz-date": amz_date,
                        "x-amz-content-sha256": payload_hash})  # fmt: skip
        canonical_query = "&".join(
            f"{quote(str(k), safe='-_.~')}={quote(str(v), safe='-_.~')}"
            for k, v in sorted(query.items())
        )
        names = sorted(k.lower() for k in headers)
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        canonical_headers = "".join(f"{n}:{lower[n]}\n" for n in names)
        signed = ";".join(names)
        canonical = "\n".join(
            [method, path, canonical_query, canonical_headers, signed, payload_hash]
        )
        scope = f"{day}/{self.config.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self.config.secret_key).encode()
        for item in (day, self.config.region, "s3", "aws4_request"):
            key = hmac.new(key, item.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.config.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return canonical_query

    def request(
        self,
        method: str,
        key: str = "",
        *,
        query: dict | None = None,
        body: bytes = b"",
        headers: dict | None = None,
        ok: tuple[int, ...] = (200, 204),
    ) -> http.client.HTTPResponse:
        """One signed request; the response is returned unread (a GET body streams)."""
        query = query or {}
        headers = dict(headers or {})
        path = "/" + quote(self.config.bucket, safe="") + ("/" + quote(key, safe="/~") if key
                                                            else "")  # fmt: skip
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        canonical_query = self._sign(method, path, query, headers, payload)
        url = path + (f"?{canonical_query}" if canonical_query else "")
        cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.config.timeout)
        try:
            conn.request(method, url, body=body or None, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise StorageError(f"S3 {method} {key or self.config.bucket} failed: {exc}") from None
        if response.status not in ok:
            detail = response.read(4096)
            conn.close()
            try:
                root = _parse(detail)
                said = f"{_text(root, 'Code')}: {_text(root, 'Message')}"
            except ET.ParseError:
                said = detail.decode(errors="replace")[:300]
            raise StorageError(
                f"S3 {method} {key or self.config.bucket} answered {response.status} {said}"
            )
        # HTTPResponse has no field for its connection (its stubs can't take one): _done closes it.
        response.conn = conn  # type: ignore[attr-defined]
        return response

    def xml(self, method: str, key: str = "", **kwargs) -> ET.Element:
        response = self.request(method, key, **kwargs)
        try:
            data = response.read()
        finally:
            _done(response)
        return _parse(data) if data.strip() else ET.Element("empty")

    # --- bucket facts -------------------------------------------------------------------

    def versioning(self) -> bool:
        return _text(self.xml("GET", query={"versioning": ""}), "Status") == "Enabled"

    def object_lock(self) -> bool:
        try:
            root = self.xml("GET", query={"object-lock": ""})
        except StorageError as exc:
            if "ObjectLockConfigurationNotFound" in str(exc):
                return False
            raise
        return _text(root, "ObjectLockEnabled") == "Enabled"

    def list(self, prefix: str) -> list[dict]:
        """Every object under ``prefix`` (key, size, last modified), all pages."""
        found, token = [], None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            root = self.xml("GET", query=query)
            for item in _findall(root, "Contents"):
                found.append({"key": _text(item, "Key"), "size": int(_text(item, "Size", "0")),
                              "modified": _text(item, "LastModified")})  # fmt: skip
            if _text(root, "IsTruncated") != "true":
                return found
            token = _text(root, "NextContinuationToken")

    def versions(self, prefix: str) -> builtins.list[tuple[str, str]]:
        """(key, version id) of every version and delete marker under ``prefix``."""
        found, marker, version_marker = [], None, None
        while True:
            query = {"versions": "", "prefix": prefix}
            if marker:
                query.update({"key-marker": marker, "version-id-marker": version_marker or ""})
            root = self.xml("GET", query=query)
            for tag in ("Version", "DeleteMarker"):
                for item in _findall(root, tag):
                    found.append((_text(item, "Key"), _text(item, "VersionId")))
            if _text(root, "IsTruncated") != "true":
                return found
            marker, version_marker = (
                _text(root, "NextKeyMarker"),
                _text(root, "NextVersionIdMarker"),
            )

    def delete(self, key: str, version: str = "") -> None:
        query = {"versionId": version} if version else {}
        response = self.request("DELETE", key, query=query, ok=(200, 204))
        response.read()
        _done(response)

    def head(self, key: str) -> dict | None:
        try:
            response = self.request("HEAD", key)
        except StorageError as exc:
            if " 404 " in str(exc):
                return None
            raise
        response.read()
        _done(response)
        return {"size": int(response.getheader("Content-Length", "0")),
                "etag": (response.getheader("ETag") or "").strip('"')}  # fmt: skip


def _done(response: http.client.HTTPResponse) -> None:
    response.close()
    conn = getattr(response, "conn", None)
    if conn is not None:
        conn.close()


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - S3's checksum


class S3Upload:
    """A write-only file that becomes one object: a streaming multipart upload."""

    def __init__(self, client: S3Client, key: str) -> None:
        self.client, self.key = client, key
        root = client.xml("POST", key, query={"uploads": ""})
        self.upload_id = _text(root, "UploadId")
        self.buffer = bytearray()
        self.parts: list[tuple[int, str]] = []
        self.md5s: list[bytes] = []
        self.size = 0
        self.closed = False

    def _send(self, data: bytes) -> None:
        number = len(self.parts) + 1
        response = self.client.request(
            "PUT", self.key, query={"partNumber": str(number), "uploadId": self.upload_id},
            body=data, headers={"Content-MD5": _md5_b64(data)},
        )  # fmt: skip
        response.read()
        _done(response)
        self.parts.append((number, response.getheader("ETag") or ""))
        self.md5s.append(hashlib.md5(data).digest())  # noqa: S324 - S3's ETag
        self.size += len(data)

    def write(self, data) -> int:
        self.buffer += data
        part = self.client.config.part_bytes
        while len(self.buffer) >= part:
            chunk = bytes(self.buffer[:part])
            del self.buffer[:part]
            self._send(chunk)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Complete the upload and check the object S3 made of it (ETag and size)."""
        if self.closed:
            return
        self.closed = True
        if self.buffer or not self.parts:
            self._send(bytes(self.buffer))
            self.buffer = bytearray()
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                for n, etag in self.parts
            )
            + "</CompleteMultipartUpload>"
        )
        root = self.client.xml("POST", self.key, query={"uploadId": self.upload_id},
                               body=body.encode())  # fmt: skip
        if _find(root, "Code") is not None:  # a 200 carrying an error: S3 does that here
            raise StorageError(f"S3 could not complete {self.key}: {_text(root, 'Message')}")
        expected = hashlib.md5(b"".join(self.md5s)).hexdigest() + f"-{len(self.md5s)}"  # noqa: S324
        found = self.client.head(self.key)
        etag = _text(root, "ETag").strip('"') or (found or {}).get("etag", "")
        if found is None or found["size"] != self.size or etag != expected:
            raise StorageError(
                f"S3 upload of {self.key} does not match what was sent: "
                f"{found['size'] if found else 'no'} bytes stored of {self.size}, ETag "
                f"{etag or '?'} (expected {expected})"
            )

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                _done(self.client.request("DELETE", self.key, query={"uploadId": self.upload_id}))
            except StorageError:
                pass  # the sweeper aborts stale uploads

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Body:
    """A GET body as a binary reader (closing it closes the connection)."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, size: int = -1) -> bytes:
        try:
            return self.response.read(size if size and size > 0 else None)
        except (http.client.HTTPException, OSError) as exc:
            raise StorageError(f"reading from S3 failed: {exc!r}") from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        _done(self.response)


class S3Staging:
    def __init__(self, storage: S3Storage, run_key: str) -> None:
        self.storage, self.run_key = storage, run_key
        self.uploads: list[S3Upload] = []
        if storage.client.head(storage.full(f"{run_key}/{MANIFEST}")) is not None:
            raise StorageError(f"{run_key} already exists")

    def create(self, name: str) -> S3Upload:
        _check_key(name)
        if "/" in name or name == MANIFEST:
            raise StorageError(f"bad file name {name!r}")
        upload = S3Upload(self.storage.client, self.storage.full(f"{self.run_key}/{name}"))
        self.uploads.append(upload)
        return upload

    def commit(self, manifest: dict) -> bytes:
        import json

        for upload in self.uploads:
            upload.close()
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        response = self.storage.client.request(
            "PUT", self.storage.full(f"{self.run_key}/{MANIFEST}"), body=data,
            headers={"Content-MD5": _md5_b64(data), "Content-Type": "application/json"},
        )  # fmt: skip
        response.read()
        _done(response)
        return data

    def abort(self) -> None:
        for upload in self.uploads:
            upload.abort()
        try:
            self.storage.delete_run(self.run_key)
        except StorageError:
            pass  # locked or unreachable: nothing lists it without a manifest


class S3Storage:
    """``s3://bucket/prefix/<source>/<run>/<file>``, plus ``MANIFEST.json`` per run."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.client = S3Client(config)
        self.prefix = config.prefix.strip("/") + "/" if config.prefix.strip("/") else ""
        self.location = f"s3://{config.bucket}/{self.prefix}"

    def full(self, key: str) -> str:
        return self.prefix + key

    def begin(self, run_key: str) -> S3Staging:
        _check_key(run_key)
        if run_key.count("/") != 1:
            raise StorageError(f"run keys are <source>/<run>, not {run_key!r}")
        return S3Staging(self, run_key)

    def open(self, key: str) -> _Body:
        _check_key(key)
        try:
            return _Body(self.client.request("GET", self.full(key)))
        except StorageError as exc:
            if " 404 " in str(exc):
                raise StorageError(f"{key} is missing from {self.location}") from None
            raise

    def size(self, key: str) -> int:
        found = self.client.head(self.full(key))
        if found is None:
            raise StorageError(f"{key} is missing from {self.location}")
        return found["size"]

    def exists(self, key: str) -> bool:
        return self.client.head(self.full(key)) is not None

    def delete_run(self, run_key: str) -> None:
        """The manifest first (a half-deleted run is never listed), then everything else;
        every version in a versioned bucket."""
        _check_key(run_key)
        base = self.full(run_key) + "/"
        if self.client.versioning():
            items = self.client.versions(base)
        else:
            items = [(o["key"], "") for o in self.client.list(base)]
        items.sort(key=lambda item: not item[0].endswith("/" + MANIFEST))
        refused = []
        for key, version in items:
            try:
                self.client.delete(key, version)
            except StorageError as exc:
                refused.append(f"{key}{f' (version {version})' if version else ''}: {exc}")
        if refused:
            raise StorageError(
                f"{len(refused)} object(s) of {run_key} could not be deleted (object lock?): "
                + "; ".join(refused[:3])
            )

    def list_runs(self) -> list[str]:
        suffix = "/" + MANIFEST
        runs = set()
        for item in self.client.list(self.prefix):
            key = item["key"][len(self.prefix) :]
            if key.endswith(suffix) and key.count("/") == 2 and INCOMPLETE not in key:
                runs.add(key[: -len(suffix)])
        return sorted(runs)

    def free_bytes(self) -> int | None:
        return None  # a bucket has no "free space"

    def sweep_incomplete(self, *, older_than: float, keep: set[str]) -> list[str]:
        """Abort multipart uploads left by crashed runs (older than ``older_than`` s)."""
        cutoff = time.time() - older_than
        root = self.client.xml("GET", query={"uploads": "", "prefix": self.prefix})
        removed = []
        for item in _findall(root, "Upload"):
            key = _text(item, "Key")
            run_key = "/".join(key[len(self.prefix) :].split("/")[:2])
            started = dt.datetime.fromisoformat(_text(item, "Initiated").replace("Z", "+00:00"))
            if run_key in keep or started.timestamp() > cutoff:
                continue
            try:
                _done(
                    self.client.request("DELETE", key, query={"uploadId": _text(item, "UploadId")})
                )
            except StorageError:
                continue
            removed.append(run_key)
        return removed


def from_settings() -> S3Storage:
    from django.conf import settings

    return S3Storage(
        S3Config(
            endpoint=settings.BACKUP_S3_ENDPOINT,
            # env_str with a default never gives None; its signature says str | None.
            bucket=settings.BACKUP_S3_BUCKET or "",
            region=settings.BACKUP_S3_REGION or "",
            access_key=settings.BACKUP_S3_ACCESS_KEY_ID or "",
            secret_key=settings.BACKUP_S3_SECRET_ACCESS_KEY or "",
            prefix=settings.BACKUP_S3_PREFIX or "",
            part_bytes=settings.BACKUP_S3_PART_MB << 20,
        )
    )
