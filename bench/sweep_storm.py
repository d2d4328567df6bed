"""The missed-heartbeat sweep at fleet scale, and an incident storm.

`.venv/bin/python -m bench.sweep_storm` builds its own world and tears it
down: a private PostgreSQL cluster and redis-server (or ``--database-url`` /
``--redis-url``), a ``portal_bench_hb`` database, ``--fleet`` agents (100,000)
bulk-inserted, and two webhook channels. Then:

- the sweep (``incidents.actions.mark_missing_agents``) with 1,000 and 10,000 of them
  overdue (``--overdue``), each ``--repeat`` times (the world is put back between runs):
  wall time, and what it left behind: incidents, timeline events, notification rows and
  their send jobs in Redis, decision jobs, audit events;
- the same sweep with none overdue;
- a storm: ``--storm`` agents (5,000) of one environment go silent at once, the sweep
  runs every 30 s of simulated time until all are overdue: time to the grouped
  incident and how many notifications went out (target: 1 plus digests).

Handled means committed: the rows are written and the jobs are in Redis; the RQ
workers that send notifications and run decisions are not part of the figure (no
worker runs here). The machine is shared: the load average is printed next to the
figures. A benchmark that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.heartbeats import (  # noqa: E402 - after the path fix above
    bench_env,
    drop_database,
    find_services,
    flush_redis,
    load_line,
    machine_line,
    recreate_database,
)

TARGETS = {1000: 1.0, 10000: 5.0}  # overdue agents → seconds (issue 12)
SWEEP_EVERY = 30  # seconds: incidents.jobs.sweep's interval in portal/cron.py


def insert_fleet(count: int, now, environments=("production", "staging")) -> None:
    """``count`` healthy agents, due within one period + grace, spread like a real fleet."""
    from django.db import connection

    from incidents.models import Agent
    from incidents.signing import SEAL_PURPOSE
    from portal.lib.secretbox import seal

    rng = random.Random(42)
    sealed = seal("bench-fleet-agent", purpose=SEAL_PURPOSE)  # these agents never call in
    rows = []
    for i in range(count):
        period = rng.choice((60, 120, 120, 300, 900))
        alert_after = now + timedelta(seconds=rng.uniform(1, period + 60))
        rows.append(
            Agent(
                name=f"fleet-{i:06d}",
                secret_sealed=sealed,
                environment=environments[i % len(environments)],
                expected_period=period,
                grace=60,
                version="1.4.2",
                last_seen=alert_after - timedelta(seconds=period + 60),
                last_telemetry={"cpu_pct": 12.5, "mem_pct": 40.1, "disk_pct": 33.0},
                alert_after=alert_after,
            )
        )
    Agent.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE incidents_agent")


def make_overdue(ids: list[int], now, rng: random.Random) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        # One statement: each picked agent missed its heartbeat within the last 10 minutes.
        cursor.execute(
            "UPDATE incidents_agent SET alert_after = %s - (random() * 599 + 1) * interval '1 s', "
            "missing = false WHERE id = ANY(%s)",
            [now, ids],
        )


def reset(ids: list[int], now) -> None:
    """Put the world back (bench database only): no incidents, notifications or jobs."""
    from django.db import connection

    from incidents.models import Decision, Incident, IncidentEvent
    from portal.lib.redis import get_redis
    from portal.models import Notification

    IncidentEvent.objects.all().delete()
    Decision.objects.all().delete()
    Incident.objects.all().delete()
    Notification.objects.all().delete()
    get_redis().flushdb()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE incidents_agent SET alert_after = %s + interval '1 hour', missing = false "
            "WHERE id = ANY(%s)",
            [now, ids],
        )


def counts(since_audit: int) -> dict[str, int]:
    from incidents.models import Incident, IncidentEvent
    from portal.lib.redis import get_redis
    from portal.models import AuditEvent, Notification

    redis = get_redis()
    jobs = [key.decode() for key in redis.scan_iter("rq:job:*", count=5000)]
    return {
        "incidents": Incident.objects.count(),
        "events": IncidentEvent.objects.count(),
        "notifications": Notification.objects.count(),
        "notification_jobs": sum(1 for j in jobs if j.startswith("rq:job:notify-")),
        "decision_jobs": sum(1 for j in jobs if j.startswith("rq:job:incident-decide")),
        "audit_events": AuditEvent.objects.filter(pk__gt=since_audit).count(),
    }


def last_audit_id() -> int:
    from portal.models import AuditEvent

    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def sweep_runs(all_ids: list[int], overdue: int, repeat: int, now) -> list[str]:
    from incidents import actions

    rng = random.Random(overdue)
    lines, times = [], []
    for run in range(repeat):
        picked = rng.sample(all_ids, overdue)
        make_overdue(picked, now, rng)
        audit_before = last_audit_id()
        begin = time.perf_counter()
        flagged = actions.mark_missing_agents(now)
        took = time.perf_counter() - begin
        times.append(took)
        found = counts(audit_before)
        if len(flagged) != overdue or found["incidents"] != overdue:
            raise RuntimeError(f"flagged {len(flagged)}, incidents {found['incidents']}")
        if run == 0:
            lines.append(
                "    left behind: "
                + ", ".join(f"{value:,} {name.replace('_', ' ')}" for name, value in found.items())
            )
        reset(picked, now)
    target = TARGETS.get(overdue)
    median = statistics.median(times)
    verdict = (
        ""
        if target is None
        else f"; target < {target:g} s: {'MET' if median < target else 'MISSED'}"
    )
    lines.insert(
        0,
        f"sweep, {overdue:,} overdue of {len(all_ids):,}: median {median:.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, {repeat} runs, "
        f"{1000 * median / overdue:.3f} ms per agent){verdict}  [{load_line('now')}]",
    )
    return lines


def run_storm(
    size: int, all_ids: list[int], now, wait_seconds: int = 0, phase: float | None = None
) -> list[str]:
    """``size`` agents stop at once; the sweep (and the storm sweep) run every 30 s of
    simulated time until all are flagged and a digest interval has passed. Their last
    heartbeats were spread over their periods, so their deadlines fall over the next
    period + grace: a real storm reaches the sweep over several runs."""
    from django.conf import settings
    from django.db import connection
    from django.db.models import Max, Min

    from incidents import actions, storms
    from incidents.models import Agent, GroupingRule, Incident, IncidentGroup
    from portal.choices import NotificationKind
    from portal.models import Notification

    rng = random.Random(size)
    silent = rng.sample(all_ids, size)
    t0 = now + timedelta(hours=2)  # clear of the sweep runs above
    GroupingRule.objects.filter(name="fleet-storm").update(enabled=True, wait_seconds=wait_seconds)
    storms.forget_cached_rules()
    rule = GroupingRule.objects.get(name="fleet-storm")
    with connection.cursor() as cursor:
        # Everyone else is healthy all along; the silent ones last beat within their period.
        cursor.execute(
            "UPDATE incidents_agent SET alert_after = %s + interval '1 day', missing = false",
            [t0],
        )
        cursor.execute(
            "UPDATE incidents_agent SET last_seen = %s - random() * expected_period "
            "* interval '1 s' WHERE id = ANY(%s)",
            [t0, silent],
        )
        cursor.execute(
            "UPDATE incidents_agent SET alert_after = last_seen + (expected_period + grace) * "
            "interval '1 s' WHERE id = ANY(%s)",
            [silent],
        )
    due = Agent.objects.filter(pk__in=silent).aggregate(
        first=Min("alert_after"), last=Max("alert_after")
    )
    first_due, last_due = due["first"], due["last"]
    if first_due is None or last_due is None:
        raise RuntimeError("the silent agents have no deadline")
    # The sweep's phase against the first deadline: random, or given (0.1 s: the worst case,
    # a sweep right after the first deadline, when it finds the fewest agents).
    offset = rng.uniform(0, SWEEP_EVERY) if phase is None else phase
    tick = first_due + timedelta(seconds=offset)
    formed: tuple[datetime, float, int] | None = None  # simulated time, wall, sweep number
    sweeps, walls = 0, []
    end = last_due + timedelta(seconds=settings.INCIDENT_DIGEST_INTERVAL + SWEEP_EVERY)
    while tick <= end:
        begin = time.perf_counter()
        actions.mark_missing_agents(now=tick)
        storms.sweep(tick)
        walls.append(time.perf_counter() - begin)
        sweeps += 1
        if formed is None and IncidentGroup.objects.exists():
            formed = (tick, walls[-1], sweeps)
        tick += timedelta(seconds=SWEEP_EVERY)
    flagged = Agent.objects.filter(pk__in=silent, missing=True).count()
    groups = list(IncidentGroup.objects.all())
    own = Notification.objects.filter(subject_type="incidents.incident")

    def of_groups(kind):
        return Notification.objects.filter(
            subject_type="incidents.incidentgroup", kind=kind
        ).count()

    channels = max(1, len({n for n in Notification.objects.values_list("channel_id", flat=True)}))
    opened, digests = (
        of_groups(NotificationKind.INCIDENT_OPENED),
        of_groups(NotificationKind.INCIDENT_DIGEST),
    )
    own_pages = own.filter(kind=NotificationKind.INCIDENT_OPENED).count()
    members = sum(g.members_total for g in groups)
    lines = [
        f"\n== Storm: {size:,} agents go silent at once (rule {rule.name}: "
        f"{rule.min_agents} agents within {rule.window_seconds} s, wait {wait_seconds} s; "
        f"sweep every {SWEEP_EVERY} s, the first {offset:.1f} s after the first deadline) ==",
        f"deadlines spread over {(last_due - first_due).total_seconds():.0f} s (their periods); "
        f"{sweeps} sweeps of simulated time, wall per sweep median "
        f"{1000 * statistics.median(walls):.0f} ms, max {1000 * max(walls):.0f} ms; "
        f"{flagged:,} of {size:,} flagged",
        f"grouped incident: {len(groups)} storm(s), {members:,} members; formed at sweep "
        f"{formed[2]}, {(formed[0] - first_due).total_seconds():.1f} s of simulated time after "
        f"the first deadline, by a sweep that took {1000 * formed[1]:.0f} ms"
        if formed
        else "grouped incident: NONE formed",
        f"notifications per channel ({channels} channels): storm opened {opened // channels}, "
        f"digests {digests // channels}, the agents' own pages {own_pages // channels}; "
        f"target 1 plus digests, not {size:,}: "
        + (
            "MET"
            if opened // channels == 1 and own_pages == 0
            else f"MISSED ({own_pages // channels} own pages)"
        ),
        f"  [{load_line('now')}]",
    ]
    # Back to a quiet world for whatever runs next.
    Incident.objects.all().delete()
    IncidentGroup.objects.all().delete()
    Notification.objects.all().delete()
    reset(silent, now)
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an existing PostgreSQL server (default: private)")
    parser.add_argument(
        "--redis-url", help="an existing Redis database, flushed (default: private)"
    )
    parser.add_argument("--fleet", type=int, default=100_000)
    parser.add_argument("--overdue", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--storm", type=int, default=5000, help="agents going silent at once (0: skip)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        database_url, redis_url, _ = find_services(
            workdir, stack, args.database_url, args.redis_url
        )
        recreate_database(database_url)
        stack.callback(drop_database, database_url)
        stack.callback(flush_redis, redis_url)
        flush_redis(redis_url)
        os.environ.update(bench_env(database_url, redis_url, workdir))
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        from incidents.models import Agent
        from portal.models import NotificationChannel

        call_command("migrate", verbosity=0)
        print(machine_line())
        print(load_line("at start"))
        for name in ("ops-webhook", "chat-webhook"):
            NotificationChannel.objects.create(name=name, kind="WEBHOOK", url="http://127.0.0.1:9/")
        now = timezone.now()
        begin = time.perf_counter()
        insert_fleet(args.fleet, now)
        all_ids = list(Agent.objects.values_list("pk", flat=True))
        print(
            f"\n{args.fleet:,} agents bulk-inserted in {time.perf_counter() - begin:.1f} s, "
            "2 webhook channels (nothing is sent: no worker runs)"
        )
        from incidents.models import GroupingRule

        GroupingRule.objects.update(enabled=False)  # every incident pages: the heavier path
        print(
            "\n== Missed-heartbeat sweep (mark_missing_agents, batches of 1,000; grouping "
            "rules off, so every incident pages on its own) =="
        )
        for overdue in args.overdue:
            print("\n".join(sweep_runs(all_ids, overdue, args.repeat, now)))
        from incidents import actions

        empty = []
        for _ in range(5):
            begin = time.perf_counter()
            assert actions.mark_missing_agents(now) == []
            empty.append(time.perf_counter() - begin)
        print(f"sweep, 0 overdue: median {1000 * statistics.median(empty):.1f} ms of 5")
        if args.storm:
            # Every incident above paged on its own (the heavier path): no rule then.
            print("\n".join(run_storm(args.storm, all_ids, now)))
            print("\n".join(run_storm(args.storm, all_ids, now, phase=0.1)))
            print("\n".join(run_storm(args.storm, all_ids, now, wait_seconds=30, phase=0.1)))
        print(f"\n{load_line('at end')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
