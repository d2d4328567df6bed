"""Encryption at rest (issue 13 §6): AES-256-GCM in chunks, keys from the environment, the
key id recorded per artifact. The stored bytes do not hold the data; a wrong or missing key
fails verification and restore with a clear message; a truncated, reordered or altered
ciphertext is detected. The tests run with DEBUG off, so encryption is on by default
(tests/run.py sets a test key)."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid

import pytest
import zstandard
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from backups import actions
from backups.choices import RestoreStatus, SourceKind, Verification
from backups.encryption import (
    DecryptingReader,
    EncryptingWriter,
    EncryptionError,
    Key,
    Keyring,
    parse_keys,
)
from backups.jobs import verify_run
from tests.backups.helpers import backup_now, dump_of, make_source, pg_source, plan_now, read_plain
from tests.backups.restoring import approve_and_run

KEY = Key("k1", b"\x11" * 32)


def _b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def _seal(data: bytes, key: Key = KEY, chunk: int = 1000) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, key, chunk=chunk)
    for start in range(0, len(data), 777):  # writes of another size than the chunks
        writer.write(data[start : start + 777])
    writer.finish()
    return out.getvalue()


RING = Keyring((KEY,))


def _open(sealed: bytes, ring: Keyring = RING) -> bytes:
    reader = DecryptingReader(io.BytesIO(sealed), ring)
    out = b""
    while data := reader.read(4096):
        out += data
    return out


def _frames(sealed: bytes) -> tuple[bytes, list[bytes]]:
    header_size = 8 + 1 + sealed[8] + 16 + 8 + 4
    header, rest, frames = sealed[:header_size], sealed[header_size:], []
    while rest:
        length = int.from_bytes(rest[1:5], "big")
        frames.append(rest[: 5 + length])
        rest = rest[5 + length :]
    return header, frames


def test_a_round_trip_of_many_chunks_gives_back_every_byte():
    data = os.urandom(10_500)
    sealed = _seal(data)
    header, frames = _frames(sealed)
    assert len(frames) == 11 and frames[-1][0] == 1 and all(f[0] == 0 for f in frames[:-1])
    assert _open(sealed) == data
    assert _open(_seal(b"")) == b""  # an empty stream is one (final) empty chunk


def test_a_stream_cut_anywhere_is_detected_as_truncated():
    sealed = _seal(os.urandom(5000))
    header, frames = _frames(sealed)
    ends = [len(header)] + [len(header) + sum(map(len, frames[: i + 1])) for i in range(4)]
    for cut in [*ends, len(header) + 3, len(sealed) - 1, 5]:
        with pytest.raises(EncryptionError, match="truncated"):
            _open(sealed[:cut])


def test_reordered_altered_or_extended_ciphertext_is_refused():
    sealed = _seal(os.urandom(3000))
    header, frames = _frames(sealed)
    with pytest.raises(EncryptionError, match="cannot decrypt chunk 0"):
        _open(header + frames[1] + frames[0] + b"".join(frames[2:]))
    flipped = bytearray(sealed)
    flipped[len(header) + 2000] ^= 1
    with pytest.raises(EncryptionError, match="damaged"):
        _open(bytes(flipped))
    with pytest.raises(EncryptionError, match="bytes after the final chunk"):
        _open(sealed + b"\0")
    # A final chunk moved forward (dropping the middle) does not authenticate either.
    with pytest.raises(EncryptionError):
        _open(header + frames[0] + frames[-1])


def test_a_wrong_or_missing_key_is_named():
    sealed = _seal(b"data")
    with pytest.raises(EncryptionError, match=r"key 'k1', which is not in .* \(have: k2\)"):
        _open(sealed, Keyring((Key("k2", b"\x22" * 32),)))
    with pytest.raises(EncryptionError, match="wrong key, or the file is damaged"):
        _open(sealed, Keyring((Key("k1", b"\x33" * 32),)))


def test_keys_parse_and_errors_never_show_a_key():
    ring = parse_keys(f"new:{_b64(b'a' * 32)}, old:{base64.urlsafe_b64encode(b'b' * 32).decode()}")
    assert ring.ids == ["new", "old"] and ring.current.secret == b"a" * 32
    assert "a" * 8 not in repr(ring)
    secret = _b64(b"c" * 16)
    for raw, message in [
        (f"k:{secret}", "16 bytes; it must be 32"),
        ("k:not base64!", "not base64"),
        (f"bad id!:{_b64(b'a' * 32)}", "not 'id:base64key'"),
        (f"k:{_b64(b'a' * 32)},k:{_b64(b'b' * 32)}", "twice"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=message) as caught:
            parse_keys(raw)
        assert secret not in str(caught.value)


def test_no_key_with_encryption_on_is_a_system_check_error(settings):
    assert settings.BACKUP_ENCRYPTION  # DEBUG is off in the tests: on by default
    settings.BACKUP_ENCRYPTION_KEYS = ""
    assert "backups.E002" in [m.id for m in run_checks()]
    settings.BACKUP_ENCRYPTION_KEYS = "k:short"
    errors = [m for m in run_checks() if m.id == "backups.E001"]
    assert errors and "short" not in errors[0].msg
    settings.BACKUP_ENCRYPTION = False
    settings.BACKUP_ENCRYPTION_KEYS = ""
    assert not {"backups.E001", "backups.E002"} & {m.id for m in run_checks()}


@pytest.fixture
def marked(pg_cluster, pg_database):
    """A database whose rows all hold one marker string, and that marker."""
    marker = f"card-number-{uuid.uuid4().hex}"
    name = pg_database("enc", schema="")
    with pg_cluster.connect(name) as conn:
        conn.execute("CREATE TABLE cards (id int, holder text)")
        conn.execute("INSERT INTO cards SELECT i, %s FROM generate_series(1, 2000) i", [marker])
    return name, marker


@pytest.mark.django_db
def test_the_stored_bytes_do_not_hold_the_data(pg_cluster, marked, operator, capture, settings):
    name, marker = marked
    run = backup_now(pg_source("enc-db", pg_cluster.dsn, name), operator, capture)
    assert run.verification == Verification.VERIFIED, run.verify_detail
    dump = dump_of(run)
    stored = (settings.BACKUP_STORAGE_DIR / dump.key).read_bytes()
    assert dump.key_id == "test" and stored.startswith(b"PBKENC1\n")
    assert marker.encode() not in stored and b"PGDMP" not in stored
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read()
    assert marker.encode() in read_plain(dump)  # the data is there, for the key's holder
    manifest = json.loads((settings.BACKUP_STORAGE_DIR / run.artifact_path / "MANIFEST.json")
                          .read_text())  # fmt: skip
    files = manifest["files"]
    assert {f["encryption"]["key_id"] for f in files.values()} == {"test"}

    # Control: with encryption off, the same bytes are plain zstd holding the marker.
    settings.BACKUP_ENCRYPTION = False
    plain_run = backup_now(pg_source("plain-db", pg_cluster.dsn, name), operator, capture)
    plain = dump_of(plain_run)
    assert plain.key_id == ""
    raw = (settings.BACKUP_STORAGE_DIR / plain.key).read_bytes()
    decompressed = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    assert marker.encode() in decompressed


@pytest.mark.django_db
def test_a_missing_or_wrong_key_fails_verification_and_restore_clearly(
    pg_cluster, marked, operator, approver, capture, settings
):
    name, _ = marked
    run = backup_now(pg_source("enc-db", pg_cluster.dsn, name), operator, capture)
    dump = dump_of(run)
    scratch = f"{name}_copy"
    req, _ = plan_now(capture, dump, target={"database": scratch}, by=operator)
    test_key = settings.BACKUP_ENCRYPTION_KEYS
    settings.BACKUP_ENCRYPTION_KEYS = f"other:{_b64(b'o' * 32)}"  # the backup's key is gone

    req = approve_and_run(capture, req, approver)
    assert req.status == RestoreStatus.FAILED
    assert "encrypted with key 'test', which is not in BACKUP_ENCRYPTION_KEYS" in req.error
    assert "nothing was changed" in req.error
    with pg_cluster.connect("postgres") as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [scratch]
        ).fetchone()

    assert verify_run(run.pk) == Verification.FAILED
    dump.refresh_from_db()
    assert "which is not in BACKUP_ENCRYPTION_KEYS (have: other)" in dump.verify_detail
    assert "checksum OK" not in dump.verify_detail

    settings.BACKUP_ENCRYPTION_KEYS = f"test:{_b64(b'w' * 32)}"  # right id, wrong key
    assert verify_run(run.pk) == Verification.FAILED
    dump.refresh_from_db()
    assert "cannot decrypt chunk 0 with key 'test': wrong key" in dump.verify_detail

    # Rotation: a new key first, the old one kept to read the old backups.
    settings.BACKUP_ENCRYPTION_KEYS = f"next:{_b64(b'n' * 32)},{test_key}"
    assert verify_run(run.pk) == Verification.VERIFIED
    newer = backup_now(pg_source("enc-db-2", pg_cluster.dsn, name), operator, capture)
    assert dump_of(newer).key_id == "next" and newer.verification == Verification.VERIFIED


@pytest.mark.django_db
def test_without_a_key_no_backup_is_written_in_the_clear(
    kube_api, tmp_path, operator, capture, settings
):
    settings.BACKUP_ENCRYPTION_KEYS = ""
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    run = backup_now(source, operator, capture)
    assert run.status == "FAILED" and run.failure_cause == "config"
    assert "BACKUP_ENCRYPTION_KEYS is empty" in run.error
    assert not list(settings.BACKUP_STORAGE_DIR.rglob("*.zst"))


@pytest.mark.django_db
def test_a_redis_and_a_kubernetes_backup_round_trip_encrypted(
    redis_server, kube_api, tmp_path, operator, capture
):
    server = redis_server()
    server.client().set("secret-key", "secret-value")
    run = backup_now(make_source("cache", SourceKind.REDIS, dsn=server.url), operator, capture)
    assert run.verification == Verification.VERIFIED and run.artifacts.get().key_id == "test"
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    kube = backup_now(source, operator, capture)
    assert kube.verification == Verification.VERIFIED, kube.verify_detail
    assert kube.artifacts.get().key_id == "test"
    with pytest.raises(actions.BackupError, match="resources"):
        # Reading it back for a plan decrypts it (and then wants resource selectors).
        plan_now(capture, kube.artifacts.get(), by=operator, dry_run=True)
