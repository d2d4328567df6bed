"""bench/year_of_data.py's world: issue 17's volumes seeded with INSERT ... SELECT and COPY.

``Seeder(scale).run()`` fills a migrated database (tests/query_counts.py seeds a
small one with it); ``database_size`` and ``counts`` say what is there.
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

VOLUMES = {
    "hosts": 50,
    "actions": 100_000,
    "diagnostics": 20_000,
    "agents": 2_000,
    "samples": 1_000_000,
    "incidents": 10_000,
    "audit": 500_000,
    "runs": 20_000,
    "notifications": 50_000,
}


# --- Seeding ---------------------------------------------------------------------------


def arr(values) -> str:
    """A SQL text array literal of trusted constants (the apps' own enum values)."""
    return "ARRAY[" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + "]"


def pick(values, index_sql: str) -> str:
    """values[index mod len] in SQL."""
    return f"({arr(values)})[1 + mod({index_sql}, {len(values)})]"


def insert_series(model, n: int, exprs: dict[str, str], *, source: str | None = None) -> int:
    """INSERT n rows of ``model`` in one statement. ``exprs`` maps field names to SQL over
    ``g`` (1..n, also the primary key unless given); fields not named get their Python
    default, NULL, or '' (blank text). Returns the row count."""
    from django.db import connection
    from django.db.models import CharField, TextField

    meta = model._meta
    cols, sel, params = [], [], []
    for f in meta.concrete_fields:
        cols.append(connection.ops.quote_name(f.column))
        if f.name in exprs:
            sel.append(exprs[f.name])
        elif f.primary_key:
            sel.append("g")
        elif f.has_default():
            sel.append(f"CAST(%s AS {f.db_type(connection)})")
            params.append(f.get_db_prep_save(f.get_default(), connection))
        elif f.null:
            sel.append("NULL")
        elif isinstance(f, CharField | TextField):
            sel.append("''")
        else:
            raise SystemExit(f"{meta.label}.{f.name} needs a value in the seed")
    source = source or f"generate_series(1, {int(n)}) AS g"
    sql = f"INSERT INTO {meta.db_table} ({', '.join(cols)}) SELECT {', '.join(sel)} FROM {source}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        count = cursor.rowcount
        pk = meta.pk.column
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, %s), "  # noqa: S608
            f"(SELECT coalesce(max({pk}), 1) FROM {meta.db_table}))",
            [meta.db_table, pk],
        )
    return count


def ago(seconds_sql: str) -> str:
    return f"(%(now)s::timestamptz - ({seconds_sql}) * interval '1 second')"


class Seeder:
    def __init__(self, scale: float) -> None:
        from django.utils import timezone

        self.n = {k: max(1, int(v * scale)) for k, v in VOLUMES.items()}
        self.n["hosts"] = VOLUMES["hosts"]
        self.n["agents"] = max(50, self.n["agents"])
        self.now = timezone.now().replace(microsecond=0)
        self.year = 365 * 86400

    def at(self, expr: str) -> str:
        return expr.replace("%(now)s", "'" + self.now.isoformat() + "'")

    def run(self) -> dict[str, float]:
        timings = {}
        for step in (self.users, self.hosts, self.actions, self.approvals, self.diagnostics,
                     self.agents, self.samples, self.incidents, self.backups,
                     self.notifications, self.maintenance, self.audit):  # fmt: skip
            started = time.perf_counter()
            step()
            timings[step.__name__] = time.perf_counter() - started
            print(f"  {step.__name__}: {timings[step.__name__]:.1f} s", flush=True)
        from django.db import connection

        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
        return timings

    def users(self) -> None:
        from portal.actions import set_user
        from portal.roles import Role

        self.personas = {}
        for name, role in (("ada-admin", Role.ADMIN), ("vera-viewer", Role.VIEWER),
                           ("anna-approver", Role.APPROVER), ("otto-operator", Role.OPERATOR),
                           ("olga-operator", Role.OPERATOR)):  # fmt: skip
            user, _ = set_user(name, role=role, password=secrets.token_hex(16),
                               check_password=False)  # fmt: skip
            self.personas[name] = user

    def hosts(self) -> None:
        from pra.models import Host

        insert_series(Host, self.n["hosts"], {
            "name": "'web-' || lpad(g::text, 2, '0')",
            "address": "'10.0.0.' || g",
            "host_key": "'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench' || g",
            "host_key_fingerprint": "'SHA256:bench' || md5(g::text)",
            "tags": "'dc-paris,web'",
            "created": self.at(ago(str(self.year))),
        })  # fmt: skip

    def actions(self) -> None:
        from pra.catalog import CATALOG
        from pra.choices import ActionStatus, Verification
        from pra.models import PRAAction, PreflightStatus

        n = self.n["actions"]
        names = list(CATALOG)
        impacts = [CATALOG[a].impact for a in names]
        step = self.year / n
        otto = self.personas["otto-operator"].pk
        proposed_from = n - max(10, n // 100)  # the newest 1 % wait for signatures
        status = (
            f"CASE WHEN g > {proposed_from} THEN 'PROPOSED' WHEN mod(g, 20) = 0 THEN 'FAILED' "
            "WHEN mod(g, 20) = 1 THEN 'REJECTED' WHEN mod(g, 20) = 2 THEN 'EXPIRED' "
            "ELSE 'COMPLETED' END"
        )
        created = self.at(ago(f"({n} - g) * {step}"))
        ran = f"({status}) IN ('COMPLETED', 'FAILED')"
        insert_series(PRAAction, n, {
            "action": pick(names, "g"),
            "host": "1 + mod(g, 50)",
            "params": "CASE WHEN " + pick(names, "g") + " = 'restart_container' "
                      "THEN jsonb_build_object('name', 'app-' || mod(g, 20)) ELSE '{}' END",
            "rationale": "'restart unbound after a config change, ticket ' || g",
            "impact": pick(impacts, "g"),
            "source": pick(["HUMAN", "AI", "RULE"], "g"),
            "proposed_by": f"CASE WHEN mod(g, 3) = 0 THEN {otto} END",
            "proposer_label": pick(["otto-operator", "mcp:claude", "rule:disk"], "g"),
            "status": status,
            "status_changed_at": f"{created} + interval '2 minutes'",
            "created": created,
            "approved_at": f"CASE WHEN {ran} THEN {created} + interval '1 minute' END",
            "preflight_status": f"'{PreflightStatus.OK}'",
            "preflight_output": "'ok'",
            "started_at": f"CASE WHEN {ran} THEN {created} + interval '70 seconds' END",
            "finished_at": f"CASE WHEN {ran} THEN {created} + interval '2 minutes' END",
            "exit_code": f"CASE WHEN {ran} THEN (CASE WHEN mod(g, 20) = 0 THEN 1 ELSE 0 END) END",
            "stdout": f"CASE WHEN {ran} THEN 'done' ELSE '' END",
            "failure_cause": "CASE WHEN mod(g, 20) = 0 AND g <= "
                             f"{proposed_from} THEN 'COMMAND_ERROR' ELSE '' END",
            "verification": f"CASE WHEN ({status}) = 'COMPLETED' THEN '{Verification.VERIFIED}' "
                            f"ELSE '{Verification.PENDING}' END",
        })  # fmt: skip
        assert ActionStatus.PROPOSED == "PROPOSED"

    def approvals(self) -> None:
        """MEDIUM: one signature (anna or ada, by id); HIGH: both; and ada's signature on
        half the HIGH proposals still waiting (1 of 2). Fingerprints as the actions
        compute them today."""
        from django.contrib.contenttypes.models import ContentType
        from django.db import connection

        from portal.approvals import fingerprint_of
        from pra.models import Host, PRAAction

        hosts = {h.pk: h for h in Host.objects.all()}
        anna, ada = self.personas["anna-approver"].pk, self.personas["ada-admin"].pk
        ct = ContentType.objects.get_for_model(PRAAction).pk
        rows = []
        for pk, action, host_id, params, impact, status, created in PRAAction.objects.filter(
            impact__in=["MEDIUM", "HIGH"], status__in=["COMPLETED", "FAILED", "PROPOSED"]
        ).values_list("pk", "action", "host_id", "params", "impact", "status", "created"):
            host = hosts[host_id]
            fingerprint = fingerprint_of(
                kind="pra", id=pk, action=action, host=host.name,
                address=f"{host.ssh_user}@{host.address}:{host.port}",
                host_key=host.host_key_fingerprint, host_revision=host.revision, params=params,
            )  # fmt: skip
            at = created + timedelta(seconds=30)
            if status == "PROPOSED":
                if impact == "HIGH" and pk % 2 == 0:
                    rows.append((ct, str(pk), ada, fingerprint, "", at))
                continue
            if impact == "HIGH":
                rows.append((ct, str(pk), anna, fingerprint, "", at))
                rows.append((ct, str(pk), ada, fingerprint, "", at + timedelta(seconds=20)))
            else:
                rows.append((ct, str(pk), anna if pk % 2 else ada, fingerprint, "", at))
        with connection.cursor() as cursor:
            raw = cursor.cursor
            columns = "content_type_id, object_id, approver_id, fingerprint, comment, created"
            with raw.copy(f"COPY portal_approval ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        self.n["approvals"] = len(rows)

    def diagnostics(self) -> None:
        from pra.models import DiagnosticRun

        n = min(self.n["diagnostics"], self.n["actions"] // 5)
        created = self.at(ago(f"({n} - g) * {self.year / n}"))
        insert_series(DiagnosticRun, n, {
            "host": "1 + mod(5 * g, 50)",
            "command": "'status unbound'",
            "exit_code": "0",
            "output": "'active (running)'",
            "requested_by": "'otto-operator'",
            "created": created,
            "action": "5 * g",
        })  # fmt: skip

    def agents(self) -> None:
        from incidents.models import Agent, OpsPolicy

        n = self.n["agents"]
        insert_series(Agent, n, {
            "name": "'agent-' || lpad(g::text, 4, '0')",
            "kind": pick([k.value for k in Agent.Kind], "g"),
            "owner": "'team-' || mod(g, 12)",
            "environment": pick(["production", "staging"], "g"),
            "host": "CASE WHEN mod(g, 3) = 2 THEN 1 + mod(g, 50) END",
            "version": "'1.4.' || mod(g, 7)",
            "last_seen": self.at(ago("mod(g, 100)")),
            "alert_after": self.at(ago("mod(g, 100) - 180")),
            "tags": "'dc-paris rack-' || mod(g, 40)",
            "secret_sealed": "'bench-not-a-secret'",
            "created": self.at(ago(str(self.year))),
        })  # fmt: skip
        policy = OpsPolicy.current()
        policy.whitelist.set(Agent.objects.filter(pk__lte=n // 4).values_list("pk", flat=True))

    def samples(self) -> None:
        from incidents.models import HeartbeatSample

        n, agents = self.n["samples"], self.n["agents"]
        per_agent = max(1, n // agents)
        insert_series(HeartbeatSample, n, {
            "agent": f"1 + mod(g, {agents})",
            "received": self.at(ago(f"({per_agent} - g / {agents}) * 120")),
            "version": "'1.4.' || mod(g, 7)",
            "telemetry": "jsonb_build_object('errors_last_24h', mod(g, 9), 'webhook_fail_rate', "
                         "0.01, 'cpu_pct', mod(g, 90), 'disk_pct', 40 + mod(g, 50))",
        })  # fmt: skip

    def incidents(self) -> None:
        from incidents.models import (
            AgentCommand,
            AutoPatchAttempt,
            Decision,
            Incident,
            IncidentEvent,
            IncidentGroup,
        )

        n, agents = self.n["incidents"], self.n["agents"]
        open_from = n - min(200, agents // 2)
        step = self.year / n
        opened = self.at(ago(f"({n} - g) * {step}"))
        resolved = f"g <= {open_from}"
        groups = 50
        insert_series(IncidentGroup, groups, {
            "key": "'environment=production'",
            "cause": "'heartbeat'",
            "title": "'Storm: heartbeats missing in production'",
            "severity": "3",
            "status": "'RESOLVED'",
            "first_seen": self.at(ago(f"({groups} - g) * {self.year / groups}")),
            "last_seen": self.at(ago(f"({groups} - g) * {self.year / groups}")),
            "members_total": "50",
            "opened_at": self.at(ago(f"({groups} - g) * {self.year / groups}")),
            "resolved_at": self.at(ago(f"({groups} - g) * {self.year / groups} - 600")),
            "resolution": "'recovered'",
            "auto_resolved": "true",
        })  # fmt: skip
        causes = ["heartbeat", "error_spike", "service:caddy", "metric:disk_pct"]
        insert_series(Incident, n, {
            "agent": f"1 + mod(g, {agents})",
            "cause": pick(causes, f"g / {agents}"),
            "title": "'agent-' || lpad((1 + mod(g, " + str(agents) + "))::text, 4, '0') || ': ' || "
                     + pick(causes, f"g / {agents}"),
            "severity": "1 + mod(g, 4)",
            "status": f"CASE WHEN {resolved} THEN 'RESOLVED' WHEN mod(g, 2) = 0 THEN 'OPEN' "
                      "ELSE 'ACKNOWLEDGED' END",
            "detected_at": f"{opened} - interval '40 seconds'",
            "opened_at": opened,
            "last_seen_at": f"{opened} + interval '5 minutes'",
            "resolved_at": f"CASE WHEN {resolved} THEN {opened} + interval '9 minutes' END",
            "resolution": f"CASE WHEN {resolved} THEN 'recovered' ELSE '' END",
            "auto_resolved": resolved,
            "telemetry": "'{}'::jsonb",
            "remediation": f"CASE WHEN mod(g, 10) = 0 AND 10 * g <= {self.n['actions']} "
                           "THEN 10 * g END",
            "group": f"CASE WHEN g <= {groups * 50} THEN 1 + mod(g, {groups}) END",
        })  # fmt: skip
        insert_series(IncidentEvent, 3 * n, {
            "incident": f"1 + mod(g, {n})",
            "at": self.at(ago(f"({n} - mod(g, {n})) * {step}")),
            "kind": pick(["detected", "decision", "resolved"], f"g / {n}"),
            "message": "'bench event'",
            "data": "'{}'::jsonb",
        })  # fmt: skip
        decisions = n // 2
        insert_series(Decision, decisions, {
            "incident": "2 * g",
            "source": "'HEURISTIC'",
            "action": pick(["PATCH", "ESCALATE", "NONE"], "g"),
            "explanation": "'bench'",
            "created": self.at(ago(f"({n} - 2 * g) * {step}")),
        })  # fmt: skip
        attempts = decisions // 2
        pending_from = attempts - 5
        insert_series(AutoPatchAttempt, attempts, {
            "incident": "2 * g",
            "agent": f"1 + mod(2 * g, {agents})",
            "decision": "g",
            "from_version": "'1.4.1'",
            "target_version": "'1.4.2'",
            "severity": "1 + mod(2 * g, 4)",
            "status": f"CASE WHEN g > {pending_from} THEN 'PENDING' ELSE "
                      + pick(["SUCCEEDED", "SUCCEEDED", "ROLLED_BACK"], "g") + " END",
            "needs_approval": f"g > {pending_from}",
            "created": self.at(ago(f"CASE WHEN g > {pending_from} THEN 60 "
                                   f"ELSE ({n} - 2 * g) * {step} END")),
            "status_changed_at": self.at(ago(f"({n} - 2 * g) * {step}")),
        })  # fmt: skip
        insert_series(AgentCommand, n // 2, {
            "agent": f"1 + mod(g, {agents})",
            "kind": "'update'",
            "payload": "jsonb_build_object('version', '1.4.2')",
            "status": "'ACKED'",
            "created": self.at(ago(f"({n} - 2 * g) * {step}")),
            "requested_by": "'system:autopatch'",
        })  # fmt: skip

    def backups(self) -> None:
        from backups.models import (
            BackupArtifact,
            BackupDrill,
            BackupRun,
            BackupSource,
            RestoreRequest,
            RestoreTarget,
        )

        sources, n = 20, self.n["runs"]
        insert_series(BackupSource, sources, {
            "name": "CASE WHEN mod(g, 2) = 0 THEN 'shop-' ELSE 'cache-' END || g",
            "kind": "CASE WHEN mod(g, 2) = 0 THEN 'postgres' ELSE 'redis' END",
            "dsn": "CASE WHEN mod(g, 2) = 0 THEN 'postgres://backup@10.0.1.' || g || ':5432' "
                   "ELSE 'redis://10.0.1.' || g || ':6379' END",
            "created": self.at(ago(str(self.year))),
            "drill_target": "NULL",
        })  # fmt: skip
        insert_series(RestoreTarget, 3, {
            "name": "'scratch-' || g",
            "kind": "'postgres'",
            "host": "'10.0.2.' || g",
            "drills": "true",
            "created": self.at(ago(str(self.year))),
            "updated": self.at(ago(str(self.year))),
        })  # fmt: skip
        step = self.year / n
        created = self.at(ago(f"({n} - g) * {step}"))
        failed = "mod(g, 25) = 0"
        insert_series(BackupRun, n, {
            "source": f"1 + mod(g, {sources})",
            "trigger": "'schedule'",
            "scheduled_for": created,
            "status": f"CASE WHEN {failed} THEN 'FAILED' ELSE 'SUCCEEDED' END",
            "status_changed_at": f"{created} + interval '3 minutes'",
            "created": created,
            "started_at": f"{created} + interval '1 second'",
            "finished_at": f"{created} + interval '3 minutes'",
            "bytes_raw": "100000000 + mod(g, 1000) * 1000",
            "bytes_stored": "30000000 + mod(g, 1000) * 300",
            "checksum": "md5(g::text) || md5((g + 1)::text)",
            "duration_s": "180.0",
            "artifact_path": "'/var/backups/run' || g",
            "error": f"CASE WHEN {failed} THEN 'pg_dump: connection refused' ELSE '' END",
            "failure_cause": f"CASE WHEN {failed} THEN 'UNREACHABLE' ELSE '' END",
            "verification": f"CASE WHEN {failed} THEN 'PENDING' ELSE 'VERIFIED' END",
            "verified_at": f"CASE WHEN NOT {failed} THEN {created} + interval '5 minutes' END",
            "verify_level": f"CASE WHEN {failed} THEN '' ELSE 'full' END",
            "deleted_at": f"CASE WHEN ({n} - g) * {step} > 30 * 86400 AND NOT {failed} "
                          f"THEN {created} + interval '30 days' END",
        })  # fmt: skip
        insert_series(BackupArtifact, n, {
            "run": "g",
            "component": "CASE WHEN mod(g, 2) = 0 THEN 'shop' ELSE 'redis' END",
            "key": "'run' || g || '/shop.dump'",
            "format": "CASE WHEN mod(g, 2) = 0 THEN 'pg_custom' ELSE 'rdb' END",
            "bytes_raw": "100000000",
            "bytes_stored": "30000000",
            "sha256": "md5(g::text) || md5((g + 2)::text)",
            "verification": "'VERIFIED'",
            "created": created,
        }, source=f"generate_series(1, {n}) AS g WHERE mod(g, 25) <> 0")  # fmt: skip
        insert_series(RestoreRequest, 200, {
            "artifact": f"{n} - 25 * mod(g, {max(1, n // 25 - 1)}) - 1",
            "mode": "'scratch'",
            "restore_target": "1 + mod(g, 3)",
            "target": "jsonb_build_object('target', 'scratch-' || (1 + mod(g, 3)))",
            "target_name": "'scratch-' || (1 + mod(g, 3))",
            "requester_label": "'otto-operator'",
            "status": "CASE WHEN g <= 3 THEN 'PLANNED' ELSE 'SUCCEEDED' END",
            "status_changed_at": self.at(ago("g * 3600")),
            "created": self.at(ago("g * 3600")),
        })  # fmt: skip
        insert_series(BackupDrill, 500, {
            "source": f"1 + 2 * mod(g, {sources // 2})",
            "run": f"{n} - 25 * mod(g, {max(1, min(100, n // 25 - 1))}) - 1",
            "target": "1 + mod(g, 3)",
            "trigger": "'schedule'",
            "scheduled_for": self.at(ago(f"g * {self.year / 500}")),
            "status": "'SUCCEEDED'",
            "status_changed_at": self.at(ago(f"g * {self.year / 500}")),
            "created": self.at(ago(f"g * {self.year / 500}")),
            "rto_seconds": "42.0",
            "rto_target_seconds": "900.0",
            "met_target": "true",
        })  # fmt: skip

    def maintenance(self) -> None:
        """A year of weekly windows, freezes and openings: a few dozen rows each, enough
        for the changelists to show more than one page size."""
        from datetime import UTC, datetime, time, timedelta

        from pra.models import ChangeFreeze, MaintenanceWindow, WindowOpening

        count = 30
        start = datetime(2026, 1, 4, 2, 0, tzinfo=UTC)
        windows = MaintenanceWindow.objects.bulk_create(
            MaintenanceWindow(name=f"sunday-{i:02d}", weekday=6, start_time=time(2, 0),
                              duration_minutes=120, host_tag=f"group-{i}")
            for i in range(count)
        )  # fmt: skip
        ChangeFreeze.objects.bulk_create(
            ChangeFreeze(reason=f"release freeze {i}", starts_at=start + timedelta(days=7 * i),
                         ends_at=start + timedelta(days=7 * i + 2), created_by="ada-admin")
            for i in range(count)
        )  # fmt: skip
        WindowOpening.objects.bulk_create(
            WindowOpening(window=windows[i % len(windows)],
                          opens_at=start + timedelta(days=7 * i),
                          closes_at=start + timedelta(days=7 * i, hours=2))
            for i in range(count)
        )  # fmt: skip

    def notifications(self) -> None:
        from portal.choices import NotificationKind
        from portal.models import ApiToken, Notification, NotificationChannel

        insert_series(NotificationChannel, 5, {
            "name": "'ops-hook-' || g",
            "kind": "'WEBHOOK'",
            "url": "'http://127.0.0.1:9/hook' || g",
            "kinds": "'[]'::jsonb",
            "created": self.at(ago(str(self.year))),
            "updated": self.at(ago(str(self.year))),
        })  # fmt: skip
        n = self.n["notifications"]
        created = self.at(ago(f"({n} - g) * {self.year / n}"))
        insert_series(Notification, n, {
            "channel": "1 + mod(g, 5)",
            "kind": pick(NotificationKind.values, "g"),
            "title": "'restart caddy on web-' || mod(g, 50)",
            "severity": pick(["info", "warning", "critical"], "g"),
            "subject_type": "'incidents.incident'",
            "subject_id": f"(1 + mod(g, {self.n['incidents']}))::text",
            "status": "CASE WHEN mod(g, 50) = 0 THEN 'FAILED' ELSE 'SENT' END",
            "attempts": "1",
            "created": created,
            "sent_at": f"CASE WHEN mod(g, 50) = 0 THEN NULL ELSE {created} END",
            "last_error": "CASE WHEN mod(g, 50) = 0 THEN 'HTTP 500' ELSE '' END",
        })  # fmt: skip
        insert_series(ApiToken, 10, {
            "user": str(self.personas["otto-operator"].pk),
            "name": "'bench token ' || g",
            "prefix": "'pt_' || g",
            "digest": "md5(g::text) || md5(g::text)",
            "created": self.at(ago("g * 86400")),
        })  # fmt: skip

    def audit(self) -> None:
        """Keyed events over the year, chained and HMAC'ed exactly as ``record`` does."""
        from django.db import connection, transaction

        from portal import audit
        from portal.audit import chain
        from portal.choices import AuditEventType

        n = self.n["audit"]
        key = audit.keyring().signing
        users = list(self.personas.values())
        names = [u.username for u in users] + ["system:sweep", "mcp:claude"]
        ids = [str(u.pk) for u in users] + ["", ""]
        subjects = ["pra.praaction", "incidents.incident", "backups.backuprun",
                    "portal.notificationchannel", "incidents.agent"]  # fmt: skip
        step = int(self.year * 1e6 // n)
        with connection.cursor() as cursor:  # after the personas' own events
            cursor.execute("SELECT id, hash FROM portal_auditevent ORDER BY id DESC LIMIT 1")
            base, prev = cursor.fetchone() or (0, audit.GENESIS_HASH)
            seed_sql = (  # constants and the apps' own enum values only
                f"CREATE UNLOGGED TABLE audit_seed AS SELECT {base} + g AS id, "  # noqa: S608
                f"%(now)s::timestamptz - interval '1 year' + g::bigint * {step} "
                "* interval '1 microsecond' AS created, "
                f"{pick(AuditEventType.values, 'g')} AS event_type, "
                f"{pick(names, 'g')} AS actor, "
                f"nullif({pick(ids, 'g')}, '')::integer AS actor_user_id, "
                f"{pick(subjects, 'g / 7')} AS subject_type, "
                f"(1 + mod(g, {self.n['actions']}))::text AS subject_id, "
                "jsonb_build_object('host', 'web-' || mod(g, 50), 'reason', "
                "'restart unbound after a config change', 'n', g) AS details, "
                f"'{key.id}'::text AS key_id FROM generate_series(1, {n}) AS g"
            )
            cursor.execute(self.at(seed_sql))
            cursor.execute(
                "CREATE UNLOGGED TABLE audit_seed_hash (id bigint, prev text, hash text)"
            )
        keyed, _ = chain._sql_parts()
        head = "prev_hash || chr(31) || "
        assert keyed.startswith(head)
        hashes = []
        with transaction.atomic():
            cursor = connection.chunked_cursor()
            cursor.execute(f"SELECT id, {keyed[len(head) :]} FROM audit_seed ORDER BY id")  # noqa: S608
            while rows := cursor.fetchmany(20_000):
                for event_id, tail in rows:
                    digest = key.mac((prev + audit.SEP + tail).encode())
                    hashes.append((event_id, prev, digest))
                    prev = digest
            cursor.close()
        with connection.cursor() as cursor:
            with cursor.cursor.copy("COPY audit_seed_hash (id, prev, hash) FROM STDIN") as copy:
                for row in hashes:
                    copy.write_row(row)
            cursor.execute(
                "INSERT INTO portal_auditevent (id, created, event_type, actor, actor_user_id, "
                "subject_type, subject_id, details, key_id, prev_hash, hash) "
                "SELECT s.id, s.created, s.event_type, s.actor, s.actor_user_id, s.subject_type, "
                "s.subject_id, s.details, s.key_id, h.prev, h.hash "
                "FROM audit_seed s JOIN audit_seed_hash h USING (id) ORDER BY s.id"
            )
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('portal_auditevent', 'id'), %s)", [base + n]
            )
            cursor.execute("DROP TABLE audit_seed, audit_seed_hash")


def database_size() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        return cursor.fetchone()[0]


def counts() -> dict[str, int]:
    from django.apps import apps
    from django.db import connection

    found = {}
    with connection.cursor() as cursor:
        for model in apps.get_models():
            if model._meta.app_label in ("pra", "incidents", "backups", "portal") and (
                model._meta.managed
            ):
                cursor.execute(f"SELECT count(*) FROM {model._meta.db_table}")  # noqa: S608
                found[model._meta.label] = cursor.fetchone()[0]
    return found
