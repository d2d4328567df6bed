"""A year of data: every admin page and API list answer, timed and its queries counted.

Creates the database ``bench_year`` on ``--dsn``'s server (dropped and re-created;
dropped at the end unless ``--keep``; ``--reuse`` measures an existing, already seeded
``bench_year`` again after migrating it, e.g. before/after an index migration), seeds
issue 17's volumes (``--scale`` multiplies them) with ``INSERT ... SELECT
generate_series`` and COPY, and measures with Django's test client:

- every admin changelist: the default page, a deep page (``?p=500``, or the last page),
  the first choice of each sidebar filter, a search; every change page (the first row);
- the dashboard, the approver's inbox (``?awaiting=me``);
- every API list endpoint (``/api/pra/actions`` at limit 10, 50 and 200, and by status,
  hosts, catalog, diagnostics);

as the admin and the viewer (the inbox also as the approver): median of ``--repeat``
after one warm-up request, the queries of the last request, its slowest query. Each
changelist is also requested at 10 rows per page, and the actions API at 10 and 200
rows: a query count that differs is listed as growing with page size.

Rows are valid: choices from the apps' own enums, approvals carry the fingerprint their
action computes today, the audit chain is HMAC'ed with the verifier's own SQL
expression and checked with ``scan_chain`` after seeding. Issue 17 measured it at
these volumes (812 MB). A benchmark that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench import _env  # noqa: E402 - after the path fix above
from bench.year_seed import VOLUMES, Seeder, counts, database_size  # noqa: E402

__all__ = ["VOLUMES", "Seeder", "counts", "database_size"]  # tests/query_counts.py: Seeder

DB_NAME = "bench_year"
KEY = "bench:" + "y" * 64  # a throwaway database's audit key
LIMIT_MS = 200.0

SEARCH_TERMS = {
    "pra.host": "web-1",
    "pra.praaction": "unbound",
    "incidents.agent": "agent-01",
    "incidents.incident": "heartbeat",
    "incidents.incidentgroup": "heartbeat",
    "portal.auditevent": "anna",
    "portal.notification": "caddy",
    "portal.apitoken": "bench",
    "backups.backupsource": "shop",
    "backups.restoretarget": "scratch",
}


def setup_django(dsn: str, var: Path, redis_url: str) -> None:
    database_url = _env.with_path(dsn, "/" + DB_NAME)
    os.environ.update(
        _env.portal_env(database_url, redis_url, var),
        ALLOWED_HOSTS="testserver,localhost",
        SECURE_SSL_REDIRECT="0",
        AUDIT_HMAC_KEYS=KEY,
        AUDIT_ANCHOR_DIR=str(var / "anchors"),
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    # Bench-only: the personas' passwords are never checked (force_login).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("migrate", verbosity=0)


# --- Measuring -------------------------------------------------------------------------


class Result:
    def __init__(self, page, role, url, times, cpu, queries, status, size):
        self.page, self.role, self.url = page, role, url
        self.median_ms = statistics.median(times) * 1000
        # This process's CPU (Django, templates, the driver): on a shared, loaded machine
        # wall time also holds the time spent waiting for a core; cpu + db does not.
        self.cpu_ms = statistics.median(cpu) * 1000
        self.queries = len(queries)
        self.db_ms = sum(float(q["time"]) for q in queries) * 1000
        slow = max(queries, key=lambda q: float(q["time"]), default=None)
        self.slowest_ms = float(slow["time"]) * 1000 if slow else 0.0
        self.slowest_sql = " ".join(slow["sql"].split())[:110] if slow else ""
        self.status, self.kb = status, size / 1024
        self.small_queries: int | None = None  # at a small page size

    def as_dict(self) -> dict:
        return dict(vars(self))


def fetch(client, url: str, repeat: int):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up
    times, cpu = [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            started, started_cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    return times, cpu, ctx.captured_queries, response.status_code, len(response.content)


def count_queries(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    return len(ctx.captured_queries)


def admin_pages(user, term_for) -> list[tuple[str, str, Any]]:
    """(name, url, model admin) of every changelist variant and change page."""
    from django.contrib import admin
    from django.test import RequestFactory
    from django.urls import reverse
    from django_rq.models import Dashboard

    pages: list[tuple[str, str, Any]] = []
    for model, ma in sorted(admin.site._registry.items(), key=lambda i: i[0]._meta.label):
        if model is Dashboard:
            continue  # django_rq's Redis dashboard: no database rows
        meta = model._meta
        label = f"{meta.app_label}.{meta.model_name}"
        base = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        request = RequestFactory().get(base)
        request.user = user
        if not ma.has_view_or_change_permission(request):
            continue
        cl = ma.get_changelist_instance(request)
        pages.append((f"{label} list", base, ma))
        if cl.paginator.num_pages > 1:
            deep = min(500, cl.paginator.num_pages)
            pages.append((f"{label} list ?p={deep}", f"{base}?p={deep}", ma))
        for spec in cl.filter_specs:
            choices = [c for c in spec.choices(cl) if not c.get("selected")]
            choices = [c for c in choices if c.get("query_string") not in ("?", "")]
            if choices:
                title = getattr(spec, "title", "filter")
                pages.append((f"{label} filter {title}", base + choices[0]["query_string"], ma))
        if ma.search_fields:
            term = term_for(label)
            pages.append((f"{label} search {term!r}", f"{base}?q={term}", ma))
        first = ma.get_queryset(request).order_by("-pk").first()
        if first is not None:
            url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[first.pk])
            pages.append((f"{label} change", url, None))
    return pages


API_PAGES = [
    ("api actions", "/api/pra/actions"),
    ("api actions limit=200", "/api/pra/actions?limit=200"),
    ("api actions status=PROPOSED", "/api/pra/actions?status=PROPOSED&limit=200"),
    ("api actions status=COMPLETED", "/api/pra/actions?status=COMPLETED&limit=200"),
    ("api hosts", "/api/pra/hosts"),
    ("api catalog", "/api/pra/catalog"),
    ("api diagnostics", "/api/pra/diagnostics"),
]


def measure(repeat: int, only: str | None) -> list[Result]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    users = get_user_model().objects
    results: list[Result] = []
    roles = {"admin": users.get(username="ada-admin"), "viewer": users.get(username="vera-viewer"),
             "approver": users.get(username="anna-approver")}  # fmt: skip
    plan: list[tuple[str, str, str, Any]] = []
    for role in ("admin", "viewer"):
        plan.append(("dashboard /", role, "/", None))
        plan.append(("inbox ?awaiting=me", role, "/admin/pra/praaction/?awaiting=me", None))
        for name, url, ma in admin_pages(roles[role], lambda label: SEARCH_TERMS.get(label, "x")):
            plan.append((name, role, url, ma))
        for name, url in API_PAGES:
            plan.append((name, role, url, None))
    plan.insert(0, ("inbox ?awaiting=me", "approver", "/admin/pra/praaction/?awaiting=me", None))
    plan.insert(0, ("dashboard /", "approver", "/", None))
    clients = {}
    for role, user in roles.items():
        clients[role] = Client()
        clients[role].force_login(user)
    for name, role, url, ma in plan:
        if only and only not in name:
            continue
        times, cpu, queries, status, size = fetch(clients[role], url, repeat)
        result = Result(name, role, url, times, cpu, queries, status, size)
        if ma is not None and status == 200 and "?p=" not in url:
            default = ma.list_per_page
            ma.list_per_page = 10
            try:
                result.small_queries = count_queries(clients[role], url)
            finally:
                ma.list_per_page = default
        if url == "/api/pra/actions?limit=200":
            result.small_queries = count_queries(clients[role], "/api/pra/actions?limit=10")
        results.append(result)
        flag = " SLOW" if result.median_ms > LIMIT_MS else ""
        print(f"  {result.median_ms:7.1f} ms (cpu {result.cpu_ms:6.1f}, db {result.db_ms:6.1f}) "
              f"{result.queries:4d} q  {role:8s} {name}{flag}", flush=True)  # fmt: skip
    return results


def report(results: list[Result]) -> None:
    print()
    print("| page / endpoint | role | median ms | cpu ms | db ms | queries | at 10/page | KB "
          "| slowest query |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        small = "" if r.small_queries is None else str(r.small_queries)
        status = "" if r.status == 200 else f" (HTTP {r.status})"
        print(f"| {r.page}{status} | {r.role} | {r.median_ms:.1f} | {r.cpu_ms:.1f} | "
              f"{r.db_ms:.1f} | {r.queries} | {small} | {r.kb:.0f} | {r.slowest_ms:.1f} ms "
              f"`{r.slowest_sql.replace('|', '/')}` |")  # fmt: skip
    slow = [r for r in results if r.median_ms > LIMIT_MS]
    print()
    print(f"pages over {LIMIT_MS:.0f} ms: {len(slow)} of {len(results)}")
    for r in sorted(slow, key=lambda r: -r.median_ms):
        print(f"  {r.median_ms:7.1f} ms  {r.role:8s} {r.page}  ({r.url})")
    busy = [r for r in results if r.cpu_ms + r.db_ms > LIMIT_MS]
    print(f"pages over {LIMIT_MS:.0f} ms of cpu + db (waiting for a core left out): {len(busy)}")
    for r in sorted(busy, key=lambda r: -(r.cpu_ms + r.db_ms)):
        print(f"  cpu {r.cpu_ms:7.1f} + db {r.db_ms:7.1f} ms  {r.role:8s} {r.page}  ({r.url})")
    growing = [r for r in results if r.small_queries is not None and r.small_queries != r.queries]
    print(f"query counts that change with page size: {len(growing)}")
    for r in growing:
        print(f"  {r.role:8s} {r.page}: {r.small_queries} at 10 rows, {r.queries} at full page")
    bad = [r for r in results if r.status != 200]
    if bad:
        print(f"answers other than 200: {len(bad)}")
        for r in bad:
            print(f"  HTTP {r.status} {r.role} {r.page} ({r.url})")


def audit_checks() -> None:
    """The chain verifies after seeding; ``audit_export --since``'s plan uses an index."""
    from django.db import connection

    from portal import audit
    from portal.models import AuditEvent

    started = time.perf_counter()
    result = audit.scan_chain(anchors=audit.AnchorFile(Path(tempfile.mkdtemp()) / "none"))
    took = time.perf_counter() - started
    print(f"audit chain: {result.count:,} events, intact={result.intact} ({took:.2f} s)")
    newest = AuditEvent.objects.order_by("-id").values_list("created", flat=True).first()
    if newest is None:
        return
    since = newest - timedelta(days=1)
    query = AuditEvent.objects.order_by("id").filter(created__gte=since)
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = " / ".join(row[0].strip() for row in cursor.fetchall())
    print(f"audit_export --since (last day) plan: {plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_DSN", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    parser.add_argument("--redis-url", default=redis_url)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply issue 17's volumes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help=f"leave {DB_NAME} in place")
    parser.add_argument("--reuse", action="store_true", help=f"measure an existing {DB_NAME}")
    parser.add_argument("--only", help="measure only pages whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()

    if not options.reuse:
        _env.recreate_database(options.dsn, DB_NAME)
    keep = options.keep or options.reuse
    try:
        with tempfile.TemporaryDirectory() as var:
            run(options, Path(var))
    finally:
        from django.db import connections

        connections.close_all()
        if not keep:
            _env.drop_database(options.dsn, DB_NAME)


def run(options, var: Path) -> None:
    started = time.perf_counter()
    setup_django(options.dsn, var, options.redis_url)
    print(f"migrated in {time.perf_counter() - started:.1f} s")
    if not options.reuse:
        print(f"seeding (scale {options.scale:g})…", flush=True)
        started = time.perf_counter()
        Seeder(options.scale).run()
        print(f"seeded in {time.perf_counter() - started:.1f} s")
    print(f"database {DB_NAME}: {database_size()}")
    print(", ".join(f"{label} {n:,}" for label, n in counts().items() if n))
    audit_checks()
    load = os.getloadavg()[0]
    print(f"measuring (median of {options.repeat} after a warm-up)…", flush=True)
    results = measure(options.repeat, options.only)
    report(results)
    print(f"load average (1 min) {load:.1f} at start, {os.getloadavg()[0]:.1f} at end, "
          f"on {os.cpu_count()} cores")  # fmt: skip
    if options.json:
        options.json.write_text(json.dumps([r.as_dict() for r in results], indent=1))


if __name__ == "__main__":
    main()
