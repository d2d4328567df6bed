"""Backup throughput and memory: the portal's pg_dump → zstd → storage pipeline on a
pgbench database, next to a raw ``pg_dump -Fc > file`` and next to gzip.

`make bench-backup` runs this. For each scale (default 35 and 70, about 0.5 and
1 GB in PostgreSQL) it creates ``bench_backup_s<scale>`` on ``--dsn``'s server
with ``pgbench -i`` unless it is already there (kept for the next run; pass
``--drop`` to remove it at the end), then, in the same run:

- raw: ``pg_dump -Fc -d DB -f FILE`` (pg_dump's own zlib compression);
- portal: ``backups.runner.execute`` with the real PostgreSQL transport
  (``pg_dump -Fc -Z0`` piped through the worker's streaming loop, zstd,
  SHA-256, fsync and rename), in a child process whose peak RSS
  (``getrusage``, the worker alone, not pg_dump) is reported;
- the same portal run with encryption at rest on (AES-256-GCM chunks, a key
  generated for the run), then its full verification (``verify_artifact``:
  checksum, decrypt, decompress, ``pg_restore -f /dev/null``) next to a bare
  ``pg_restore -f /dev/null`` of the uncompressed dump;
- with ``--s3``, the encrypted portal run again with an S3 bucket as the store
  (moto in server mode on loopback, as the tests use: ``tests/backups/s3server.py``);
- compression only, on the same uncompressed dump: zstd (the portal's
  settings) against ``gzip -6``: size and speed.

The raw and portal runs alternate (``--repeat`` times each) so load from other
processes falls on both alike; medians are printed. A benchmark that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def query(dsn: str, sql: str, params=(), db: str = "postgres"):
    import psycopg

    url = urlsplit(dsn)._replace(path="/" + db).geturl()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def ddl(dsn: str, sql: str, name: str) -> None:
    import psycopg
    from psycopg import sql as pgsql

    with psycopg.connect(urlsplit(dsn)._replace(path="/postgres").geturl(), autocommit=True) as c:
        c.execute(pgsql.SQL(sql).format(pgsql.Identifier(name)))


def ensure_database(dsn: str, scale: int) -> str:
    name = f"bench_backup_s{scale}"
    if query(dsn, "SELECT 1 FROM pg_database WHERE datname = %s", [name]):
        if query(dsn, "SELECT count(*) FROM pgbench_branches", db=name) == scale:
            return name
        ddl(dsn, "DROP DATABASE {} WITH (FORCE)", name)
    print(f"creating {name} with pgbench -i -s {scale} (once; kept for later runs)…", flush=True)
    ddl(dsn, "CREATE DATABASE {}", name)
    url = urlsplit(dsn)._replace(path="/" + name).geturl()
    subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), url], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return name


def raw_dump(dsn: str, db: str, out: Path) -> tuple[float, int]:
    url = urlsplit(dsn)._replace(path="/" + db).geturl()
    started = time.monotonic()
    subprocess.run(["pg_dump", "-Fc", "-d", url, "-f", str(out)], check=True)
    elapsed = time.monotonic() - started
    size = out.stat().st_size
    out.unlink()
    return elapsed, size


def portal_dump(dsn: str, db: str, storage: Path, *, encrypt: bool = False, s3: str = "") -> dict:
    """Run the portal's pipeline in a child process (its RSS is the worker's alone)."""
    import base64

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "1",
        "PORTAL_VAR_DIR": str(storage / "var"),
        "BACKUP_STORAGE_DIR": str(storage / "store"),
        "PYTHONPATH": str(BASE_DIR),
        "BACKUP_ENCRYPTION": "1" if encrypt else "0",
        "BACKUP_ENCRYPTION_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
    }
    if s3:
        endpoint, bucket = s3.rsplit("/", 1)
        env.update(
            BACKUP_STORAGE="s3", BACKUP_S3_ENDPOINT=endpoint, BACKUP_S3_BUCKET=bucket,
            BACKUP_S3_ACCESS_KEY_ID="bench", BACKUP_S3_SECRET_ACCESS_KEY="bench",
        )  # fmt: skip
    result = subprocess.run(
        [sys.executable, __file__, "--child", dsn, db], env=env, cwd=BASE_DIR,
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(storage / "store", ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(dsn: str, db: str) -> None:
    import resource

    import django

    django.setup()
    from backups.choices import SourceKind
    from backups.models import BackupSource
    from backups.runner import execute
    from backups.sources import PostgresTransport
    from backups.storage import get_storage

    source = BackupSource(name="bench", kind=SourceKind.POSTGRES, dsn=dsn, databases=db)
    started = time.monotonic()
    outcome = execute(f"bench/run-{os.getpid()}", PostgresTransport(source), get_storage())
    elapsed = time.monotonic() - started
    if not outcome.ok:
        raise SystemExit(f"backup failed: {outcome.error} {outcome.stderr}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from backups.models import BackupArtifact
    from backups.verify import verify_artifact

    dump = next(a for a in outcome.artifacts if a.format == "pg_custom")
    artifact = BackupArtifact(
        component=dump.component, key=dump.key, format=dump.format,
        sha256=dump.stream.sha256, bytes_stored=dump.stream.bytes_stored,
        key_id=dump.stream.key_id,
    )  # fmt: skip
    check = verify_artifact(get_storage(), artifact)
    if not check.ok:
        raise SystemExit(f"verification failed: {check.detail}")
    verify_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "raw": outcome.bytes_raw,
                      "stored": outcome.bytes_stored, "rss_mb": peak_kb / 1024,
                      "encrypted": bool(dump.stream.key_id), "verify_s": check.seconds,
                      "verify_rss_mb": verify_kb / 1024,
                      "s3": os.environ.get("BACKUP_STORAGE") == "s3"}))  # fmt: skip


def compression(dsn: str, db: str, work: Path) -> dict:
    """zstd (portal settings) vs gzip -6 on the same uncompressed custom-format dump."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("PORTAL_VAR_DIR", str(work / "var"))
    django.setup()
    from django.conf import settings

    from backups.streaming import compress_stream

    url = urlsplit(dsn)._replace(path="/" + db).geturl()
    plain = work / "plain.dump"
    subprocess.run(["pg_dump", "-Fc", "-Z0", "-d", url, "-f", str(plain)], check=True)
    raw = plain.stat().st_size
    started = time.monotonic()
    subprocess.run(["pg_restore", "-f", "/dev/null", str(plain)], check=True)
    pg_restore_s = time.monotonic() - started
    started = time.monotonic()
    with open(plain, "rb") as src, open(work / "plain.zst", "wb") as out:
        result = compress_stream(
            src, out, level=settings.BACKUP_ZSTD_LEVEL, threads=settings.BACKUP_ZSTD_THREADS
        )
    zstd_s = time.monotonic() - started
    started = time.monotonic()
    with open(plain, "rb") as src, open(work / "plain.gz", "wb") as out:
        subprocess.run(["gzip", "-6", "-c"], stdin=src, stdout=out, check=True)
    gzip_s = time.monotonic() - started
    gzip_size = (work / "plain.gz").stat().st_size
    for name in ("plain.dump", "plain.zst", "plain.gz"):
        (work / name).unlink()
    return {
        "raw": raw,
        "zstd": (result.bytes_stored, zstd_s, settings.BACKUP_ZSTD_LEVEL,
                 settings.BACKUP_ZSTD_THREADS),
        "gzip": (gzip_size, gzip_s),
        "pg_restore_s": pg_restore_s,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--scales", default="35,70", help="pgbench scale factors")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--drop", action="store_true", help="drop the bench databases at the end")
    parser.add_argument("--s3", action="store_true", help="also back up to S3 (moto, loopback)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(BASE_DIR))
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="backup-bench-"))
    rows = []
    moto = None
    if args.s3:
        from tests.backups.s3server import MotoServer

        moto = MotoServer(work / "moto.log")
    try:
        for scale in [int(s) for s in args.scales.split(",")]:
            db = ensure_database(args.dsn, scale)
            size = query(args.dsn, "SELECT pg_database_size(%s)", [db])
            raw_times, portal_runs, sealed_runs = [], [], []
            raw_size = 0
            for _ in range(args.repeat):
                seconds, raw_size = raw_dump(args.dsn, db, work / "raw.dump")
                raw_times.append(seconds)
                portal_runs.append(portal_dump(args.dsn, db, work))
                sealed_runs.append(portal_dump(args.dsn, db, work, encrypt=True))
                if moto is not None:
                    bucket = f"{moto.endpoint}/{_bucket(moto)}"
                    sealed_runs.append(portal_dump(args.dsn, db, work, encrypt=True, s3=bucket))
            comp = compression(args.dsn, db, work)
            rows.append((scale, db, size, raw_times, raw_size, portal_runs + sealed_runs, comp))
            print_scale(rows[-1])
        if len(rows) > 1:
            small, big = rows[0], rows[-1]
            rss_small = max(r["rss_mb"] for r in small[5])
            rss_big = max(r["rss_mb"] for r in big[5])
            print(f"\npeak RSS: {rss_small:.0f} MB at {small[2] / 1e9:.2f} GB, "
                  f"{rss_big:.0f} MB at {big[2] / 1e9:.2f} GB "
                  f"(×{rss_big / rss_small:.2f} for ×{big[2] / small[2]:.2f} data)")  # fmt: skip
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.drop:
            for scale in args.scales.split(","):
                ddl(args.dsn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", f"bench_backup_s{scale}")


def _bucket(moto) -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("DEBUG", "1")
    import django

    django.setup()
    return moto.bucket()


def print_scale(row) -> None:
    scale, db, size, raw_times, raw_size, runs, comp = row
    raw_s = statistics.median(raw_times)
    rss = max(r["rss_mb"] for r in runs)
    mb = 1e6
    print(f"\n== pgbench scale {scale}: {db}, {size / 1e9:.2f} GB in PostgreSQL ==")
    print(f"raw pg_dump -Fc > file : {raw_s:7.1f} s  {raw_size / mb:8.1f} MB   "
          f"(runs: {', '.join(f'{t:.1f}' for t in raw_times)})")  # fmt: skip
    for label, encrypted, s3, target in (("portal backup", False, False, 1.1),
                                         ("portal, encrypted", True, False, 1.15),
                                         ("portal, encrypted, S3", True, True, 1.3)):  # fmt: skip
        these = [r for r in runs if r.get("encrypted", False) == encrypted
                 and r.get("s3", False) == s3]  # fmt: skip
        if not these:
            continue
        portal_s = statistics.median(r["seconds"] for r in these)
        listed = ", ".join(f"{r['seconds']:.1f}" for r in these)
        print(f"{label:<23}: {portal_s:7.1f} s  {these[0]['stored'] / mb:8.1f} MB   "
              f"(runs: {listed})  ratio {portal_s / raw_s:.2f}x (target <= {target}x)")  # fmt: skip
    print(f"portal worker peak RSS : {rss:7.1f} MB (target < 150 MB)")
    sealed = [r for r in runs if r.get("encrypted") and not r.get("s3")]
    verify_s = statistics.median(r["verify_s"] for r in sealed)
    verify_rss = max(r["verify_rss_mb"] for r in sealed)
    print(f"full verification      : {verify_s:7.1f} s (encrypted artifact; peak RSS "
          f"{verify_rss:.0f} MB) vs bare pg_restore -f /dev/null {comp['pg_restore_s']:.1f} s "
          f"({verify_s / comp['pg_restore_s']:.2f}x)")  # fmt: skip
    zstd_size, zstd_s, level, threads = comp["zstd"]
    gzip_size, gzip_s = comp["gzip"]
    raw = comp["raw"]
    print(f"uncompressed dump      : {raw / mb:8.1f} MB")
    print(f"zstd -{level} ({threads} threads)   : {zstd_size / mb:8.1f} MB "
          f"({zstd_size / raw:5.1%})  {raw / mb / zstd_s:7.1f} MB/s")  # fmt: skip
    print(f"gzip -6                : {gzip_size / mb:8.1f} MB "
          f"({gzip_size / raw:5.1%})  {raw / mb / gzip_s:7.1f} MB/s")  # fmt: skip


if __name__ == "__main__":
    main()
