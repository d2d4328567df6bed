"""Audit chain verification at a year's volume (issue 17: 500,000 events).

Creates the database ``bench_audit`` on ``--dsn``'s server (dropped and
re-created each run, dropped at the end unless ``--keep``), migrates it, and
seeds ``--events`` keyed events fast: the rows are generated in SQL
(``generate_series`` into an unlogged staging table), their MAC inputs streamed
out once with the verifier's own SQL expression, the chain computed in Python,
and the rows inserted with one ``INSERT ... SELECT`` (INSERT is what the
append-only triggers allow). Then it prints:

- ``scan_chain()`` in-process (median of ``--repeat``), and ``manage.py
  audit_verify --no-anchor`` as a child process (wall time including Django's
  start, and its peak RSS from /usr/bin/time);
- ``audit_verify --from-anchor`` with an anchor 1,000 events before the head;
- ``record()`` cost per event (one transaction each);
- ``audit_export`` of every row, and ``--since`` for the last day (and whether
  its plan uses the index on ``created``).

Issue 17 measured 12 s and 119 MB for the old ``audit_verify`` over 500,000
events, and asks for under 3 s. A benchmark that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DB_NAME = "bench_audit"
KEY = "bench:" + "b" * 64  # a throwaway database's key


def admin(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(urlsplit(dsn)._replace(path="/postgres").geturl(), autocommit=True) as c:
        c.execute(sql)


def setup_django(dsn: str, var: Path) -> str:
    url = urlsplit(dsn)._replace(path="/" + DB_NAME).geturl()
    os.environ.update(
        DATABASE_URL=url,
        DEBUG="0",
        SECRET_KEY="bench-only-" + secrets.token_hex(32),
        ALLOWED_HOSTS="localhost",
        STATIC_MANIFEST="0",
        PORTAL_VAR_DIR=str(var),
        AUDIT_HMAC_KEYS=KEY,
        AUDIT_ANCHOR_DIR=str(var / "anchors"),
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


SEED_SQL = """
CREATE UNLOGGED TABLE audit_seed AS
SELECT g AS id,
       timestamptz '2025-12-01 00:00:00+00'
           + g::bigint * %(step)s * interval '1 microsecond' AS created,
       (ARRAY['PRA_PROPOSED', 'PRA_APPROVED', 'PRA_EXECUTED', 'HOST_ADDED'])[1 + g %% 4]
           AS event_type,
       CASE WHEN g %% 5 = 0 THEN 'system:sweep' ELSE 'user-' || (g %% 40) END AS actor,
       CASE WHEN g %% 5 = 0 THEN NULL ELSE 1 + g %% 40 END AS actor_user_id,
       'pra.praaction'::text AS subject_type,
       (g / 4)::text AS subject_id,
       jsonb_build_object('action_id', g / 4, 'host', 'web-' || (g %% 50),
                          'reason', 'restart unbound after a config change',
                          'impact', 'LOW', 'auto', g %% 2 = 0) AS details,
       %(key_id)s::text AS key_id
FROM generate_series(1, %(n)s) AS g
"""


def seed(n: int) -> float:
    from django.db import connection, transaction

    from portal import audit
    from portal.audit import chain

    started = time.perf_counter()
    key = audit.keyring().signing
    step = int(365 * 86400 * 1e6 // n)  # a year of events
    keyed, _ = chain._sql_parts()
    head = "prev_hash || chr(31) || "
    assert keyed.startswith(head)
    rest = keyed[len(head) :]  # the MAC input after "prev_hash SEP"
    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL, {"n": n, "step": step, "key_id": key.id})
        cursor.execute("CREATE UNLOGGED TABLE audit_seed_hash (id bigint, prev text, hash text)")
    prev = audit.GENESIS_HASH
    hashes = []
    with transaction.atomic():
        cursor = connection.chunked_cursor()
        cursor.execute(f"SELECT id, {rest} FROM audit_seed ORDER BY id")  # noqa: S608
        while rows := cursor.fetchmany(20_000):
            for event_id, tail in rows:
                digest = key.mac((prev + audit.SEP + tail).encode())
                hashes.append((event_id, prev, digest))
                prev = digest
        cursor.close()
    raw = connection.connection
    with raw.cursor() as cur:
        with cur.copy("COPY audit_seed_hash (id, prev, hash) FROM STDIN") as copy:
            for row in hashes:
                copy.write_row(row)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO portal_auditevent (id, created, event_type, actor, actor_user_id, "
            "subject_type, subject_id, details, key_id, prev_hash, hash) "
            "SELECT s.id, s.created, s.event_type, s.actor, s.actor_user_id, s.subject_type, "
            "s.subject_id, s.details, s.key_id, h.prev, h.hash "
            "FROM audit_seed s JOIN audit_seed_hash h USING (id) ORDER BY s.id"
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('portal_auditevent', 'id'), %s)", [n])
        cursor.execute("DROP TABLE audit_seed, audit_seed_hash")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE portal_auditevent")
    return time.perf_counter() - started


def child_verify(*args: str) -> tuple[float, float | None, str]:
    """`manage.py audit_verify` in a process of its own: wall time and its own peak RSS.

    The RSS comes from /usr/bin/time: a child's own getrusage would report the
    forked bench's high-water mark (Linux keeps it across exec).
    """
    argv = [sys.executable, "manage.py", "audit_verify", "--no-anchor", *args]
    timer = Path("/usr/bin/time")
    if timer.exists():
        argv = [str(timer), "-f", "maxrss_kb=%M", *argv]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=BASE_DIR, env=os.environ, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"audit_verify failed: {done.stderr or done.stdout}")
    rss = None
    if "maxrss_kb=" in done.stderr:
        rss = int(done.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    return elapsed, rss, done.stdout.strip()


def old_verify_seconds() -> float:
    """The verifier this replaces (ORM rows, JSON and SHA-256 per row), on the same rows.

    The rows are keyed, so every one mismatches; only the time is of interest.
    """
    from portal.audit import compute_hash
    from portal.models import AuditEvent

    started = time.perf_counter()
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        compute_hash(
            created=event.created.astimezone(UTC).isoformat(),
            event_type=event.event_type,
            actor=event.actor,
            actor_user_id=event.actor_user_id,
            subject_type=event.subject_type,
            subject_id=event.subject_id,
            details=event.details,
            prev_hash=event.prev_hash,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_DSN", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave bench_audit in place")
    parser.add_argument("--skip-old", action="store_true", help="do not time the old verifier")
    options = parser.parse_args()

    admin(options.dsn, f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    admin(options.dsn, f"CREATE DATABASE {DB_NAME}")
    try:
        with tempfile.TemporaryDirectory() as var:
            run(options, Path(var))
    finally:
        from django.db import connections

        connections.close_all()
        if not options.keep:
            admin(options.dsn, f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def run(options, var: Path) -> None:
    setup_django(options.dsn, var)
    load_before = os.getloadavg()[0]
    from django.core.management import call_command
    from django.db import connection

    from portal import audit
    from portal.choices import AuditEventType

    n = options.events
    print(f"seeding {n:,} keyed audit events…", flush=True)
    print(f"  seeded in {seed(n):.1f} s")

    times = []
    for _ in range(options.repeat):
        started = time.perf_counter()
        report = audit.scan_chain(anchors=audit.AnchorFile(var / "none"))
        times.append(time.perf_counter() - started)
        assert report.intact and report.count == n, report.problems[:3]
    full = statistics.median(times)
    wall, rss, out = child_verify()

    # An anchor 1,000 events before the head, as the periodic job leaves it.
    with connection.cursor() as cursor:
        cursor.execute("SELECT hash FROM portal_auditevent WHERE id = %s", [n - 1000])
        anchor_hash = cursor.fetchone()[0]
    report = audit.ChainReport(count=n - 1000, head_id=n - 1000, head_hash=anchor_hash)
    audit.write_anchor(report)
    partial = []
    for _ in range(options.repeat):
        started = time.perf_counter()
        report = audit.scan_chain(from_anchor=True)
        partial.append(time.perf_counter() - started)
        assert report.intact and report.count == n, report.problems[:3]
    anchor_wall, _, _ = child_verify("--from-anchor")

    writes = 2000
    started = time.perf_counter()
    for i in range(writes):
        audit.record(AuditEventType.HOST_ADDED, actor="bench", details={"i": i, "host": "web-1"})
    per_record = (time.perf_counter() - started) / writes * 1000

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT max(created) - interval '1 day' FROM portal_auditevent WHERE id <= %s", [n]
        )
        since = cursor.fetchone()[0]
        cursor.execute(
            "EXPLAIN SELECT * FROM portal_auditevent WHERE created >= %s ORDER BY id", [since]
        )
        plan = " / ".join(row[0].strip() for row in cursor.fetchall())
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        call_command("audit_export", since=since.isoformat(), stdout=sink)
    export = time.perf_counter() - started
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        call_command("audit_export", stdout=sink)
    export_all = time.perf_counter() - started

    old = None if options.skip_old else old_verify_seconds()
    load_after = os.getloadavg()[0]

    print()
    print(f"load average (1 min) {load_before:.1f} at start, {load_after:.1f} at end, "
          f"on {os.cpu_count()} cores")  # fmt: skip
    print(f"| measure ({n:,} events) | figure | issue 17 reference |")
    print("| --- | --- | --- |")
    print(f"| scan_chain() in-process, median of {options.repeat} | {full:.2f} s "
          f"({n / full:,.0f} events/s) | 12 s before; target < 3 s |")  # fmt: skip
    print(f"| `manage.py audit_verify` (child, incl. Django start) | {wall:.2f} s, "
          f"peak RSS {rss or 0:.0f} MB | 12 s, 119 MB |")  # fmt: skip
    from_anchor_ms = statistics.median(partial) * 1000
    print(f"| `audit_verify --from-anchor` (1,000 after the anchor) | in-process "
          f"{from_anchor_ms:.0f} ms; child {anchor_wall:.2f} s | – |")  # fmt: skip
    if old is not None:
        print(
            f"| the old verifier (ORM + JSON + SHA-256 per row), same rows | {old:.2f} s | 12 s |"
        )
    print(f"| `record()` (own transaction each) | {per_record:.2f} ms per event | – |")
    print(f"| `audit_export --since` (last day) | {export * 1000:.0f} ms | – |")
    print(f"| `audit_export` (every row) | {export_all:.1f} s | 14 s |")
    print()
    print(f"audit_verify said: {out}")
    print(f"export --since plan: {plan}")


if __name__ == "__main__":
    main()
