"""bench/heartbeats.py's sweep: 100,000 agents, ``mark_missing_agents`` timed and explained."""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from incidents.models import Agent

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench._env import BenchError  # noqa: E402 - after the path fix above
from bench.heartbeats_profile import Sampler, sweep_profile  # noqa: E402

TARGET_SWEEP_S = 1.0


class Stopwatch:
    """Accumulated wall time of calls to wrapped functions (bench process only)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def wrap(self, name: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


@contextlib.contextmanager
def timing(watch: Stopwatch, target: object, attribute: str, name: str) -> Iterator[None]:
    """``target.attribute`` timed into ``watch[name]`` inside the block."""
    original = getattr(target, attribute)
    setattr(target, attribute, watch.wrap(name, original))
    try:
        yield
    finally:
        setattr(target, attribute, original)


def insert_sweep_agents(count: int, overdue_percent: float, now) -> int:
    """Bulk-insert ``count`` agents; returns how many are overdue (not yet flagged, enabled)."""
    from django.db import connection

    from incidents.models import Agent
    from incidents.signing import SEAL_PURPOSE
    from portal.lib.secretbox import seal

    rng = random.Random(42)
    sealed = seal("bench-sweep-agent", purpose=SEAL_PURPOSE)  # these agents never call in
    overdue = round(count * overdue_percent / 100)
    flagged = disabled = count // 200  # 0.5% already missing, 0.5% switched off
    rows = []
    for i in range(count):
        period = rng.choice((60, 120, 120, 300, 900))
        grace = 60
        if i < overdue:  # missed within the last 10 minutes, not flagged yet
            alert_after = now - timedelta(seconds=rng.uniform(1, 600))
            missing, enabled = False, True
        elif i < overdue + flagged:  # flagged by an earlier sweep
            alert_after, missing, enabled = now - timedelta(hours=rng.uniform(1, 48)), True, True
        elif i < overdue + flagged + disabled:  # switched off long ago
            alert_after, missing, enabled = now - timedelta(days=rng.uniform(1, 90)), False, False
        else:  # healthy: next deadline within one period + grace
            alert_after = now + timedelta(seconds=rng.uniform(1, period + grace))
            missing, enabled = False, True
        rows.append(
            Agent(
                name=f"sweep-{i:06d}",
                secret_sealed=sealed,
                expected_period=period,
                grace=grace,
                version="1.4.2",
                last_seen=alert_after - timedelta(seconds=period + grace),
                last_telemetry={"cpu_pct": 12.5, "mem_pct": 40.1, "disk_pct": 33.0},
                alert_after=alert_after,
                missing=missing,
                enabled=enabled,
            )
        )
    rng.shuffle(rows)  # overdue rows spread over the table, as in life
    Agent.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE incidents_agent")
    return overdue


def scan_queryset(now: datetime) -> QuerySet[Agent, int]:
    from incidents.models import Agent

    # The exact query mark_missing_agents runs for each batch (batch=1000).
    return Agent.objects.filter(alert_after__lt=now, missing=False, enabled=True).values_list(
        "pk", flat=True
    )[:1000]


def timed_sweep(now) -> tuple[float, list[int], Stopwatch]:
    """mark_missing_agents(now), with the time in its parts summed by wrappers."""
    import rq.queue

    from incidents import actions
    from portal import live

    watch = Stopwatch()
    with (
        timing(watch, actions, "open_incidents", "incidents"),
        timing(watch, live, "_send", "live"),
        timing(watch, rq.queue.Queue, "enqueue", "enqueue"),
    ):
        start = time.perf_counter()
        flagged = actions.mark_missing_agents(now)
        elapsed = time.perf_counter() - start
    return elapsed, flagged, watch


def reset_flagged(ids: list[int]) -> None:
    """Undo a sweep (bench database only): agents not flagged, their incidents gone."""
    from incidents.models import Agent, Incident

    Incident.objects.filter(agent_id__in=ids, cause="heartbeat").delete()
    Agent.objects.filter(pk__in=ids).update(missing=False)


def run_sweep(args, workdir: Path) -> bool:
    """Prints the sweep's figures; True when the target was met."""
    from django.utils import timezone

    from incidents import actions
    from incidents.models import Agent, Incident

    print(f"\n== Missed-heartbeat sweep over {args.sweep_agents:,} agents ==")
    now = timezone.now()
    start = time.perf_counter()
    overdue = insert_sweep_agents(args.sweep_agents, args.overdue_percent, now)
    print(
        f"inserted {args.sweep_agents:,} agents with bulk_create + ANALYZE in "
        f"{time.perf_counter() - start:.1f} s: {overdue:,} overdue ({args.overdue_percent:g}%), "
        f"{args.sweep_agents // 200:,} already flagged missing, {args.sweep_agents // 200:,} "
        f"disabled, the rest due within one period + grace; {Agent.objects.count():,} rows in all"
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the sweep's scan, before the sweep:")
    print(_indent(scan_queryset(now).explain(analyze=True, buffers=True)))
    scans = []
    for _ in range(5):
        begin = time.perf_counter()
        found = len(list(scan_queryset(now)))
        scans.append(time.perf_counter() - begin)
    print(f"\nscan alone (one batch, {found:,} rows): median {ms(statistics.median(scans))} of 5")

    elapsed, flagged, watch = timed_sweep(now)
    opened = Incident.objects.filter(agent_id__in=flagged, cause="heartbeat").count()
    print(
        f"mark_missing_agents(now), {overdue:,} overdue: {elapsed:.3f} s "
        f"({len(flagged):,} agents flagged, {opened:,} incidents opened, "
        f"{1000 * elapsed / max(len(flagged), 1):.2f} ms per flagged agent)"
    )
    parts = [
        ("open_incidents (incidents, events, audit, notifications; per batch)", "incidents"),
        ("after commit: live events (portal.live._send)", "live"),
        ("after commit: RQ enqueues (decision and notification batch jobs)", "enqueue"),
    ]
    accounted = sum(watch.seconds.values())
    for label, key in parts:
        print(f"    {watch.seconds[key]:7.3f} s  {label}: {watch.calls[key]:,} calls")
    print(f"    {elapsed - accounted:7.3f} s  the rest: batch scans, UPDATE … missing=true, COMMIT")

    empty = []
    for _ in range(5):
        begin = time.perf_counter()
        if actions.mark_missing_agents(now):
            raise BenchError("a sweep right after the first one flagged agents again")
        empty.append(time.perf_counter() - begin)
    print(f"mark_missing_agents(now), 0 overdue: median {ms(statistics.median(empty))} of 5")
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the scan with 0 overdue:")
    print(_indent(scan_queryset(now).explain(analyze=True, buffers=True)))

    met = elapsed < TARGET_SWEEP_S
    print(
        f"\nVERDICT sweep: {elapsed:.3f} s with {overdue:,} overdue, "
        f"{ms(statistics.median(empty))} with none; target < {TARGET_SWEEP_S:g} s: "
        f"{'MET' if met else 'MISSED'}"
    )
    if args.profile == "always" or (args.profile == "auto" and not met):
        reset_flagged(flagged)
        sampler = Sampler([os.getpid()], workdir, "sweep", gil=False)
        if not sampler.procs:
            print("(no py-spy, so no sweep profile; `make bench-heartbeats` installs it)")
            return met
        begin = time.perf_counter()
        again = actions.mark_missing_agents(now)
        took = time.perf_counter() - begin
        stacks = sampler.stop()
        print(f"\nProfile of the sweep (py-spy, again with {len(again):,} overdue: {took:.3f} s):")
        print("\n".join(sweep_profile(stacks)))
    return met


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
