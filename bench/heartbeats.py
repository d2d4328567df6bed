"""Heartbeat ingestion (heartbeats/s, p50/p99) against a bare Django view; the missed-beat sweep.

`make bench-heartbeats` runs this. It builds its own world and tears it down:
a ``portal_bench_hb`` PostgreSQL database (dropped and re-created), Redis
database 13 (flushed), N agents made with ``incidents.actions.create_agent``,
and the portal served as in production (daphne; uvicorn too, which the lock
already pins) from ``bench.bare_asgi``: ``portal.asgi.application`` unchanged,
plus ``/bare/<pk>``, a view doing one ``UPDATE`` of the agent row behind the
same settings and middleware.

Load: closed-loop simulated agents, one keep-alive HTTP/1.1 connection each,
spread over generator processes (standard library only: sockets and threads).
Every request is freshly signed with a new nonce (``incidents.agent_client.sign``),
the bare view included, so both sides cost the generator the same. The
generator's own ceiling is measured against a null server, and every run
prints the CPU used by the servers, their PostgreSQL backends and the
generator. Then the sweep: 100,000 agents bulk-inserted, ``mark_missing_agents``
timed with 1% overdue and with none, and EXPLAIN ANALYZE of its scan.

When a target is missed (or with ``--profile always``) py-spy, if installed,
samples the servers during an extra run (and the bench process during an extra
sweep) and the script prints where the time goes. A benchmark that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench import _env  # noqa: E402 - after the path fix above
from bench._env import BenchError, load_line  # noqa: E402
from bench.heartbeats_load import (  # noqa: E402
    BENCH_DB_NAME,
    CPU_NOTE,
    HEADER,
    LoadConfig,
    Run,
    SimAgent,
    check_once,
    generator_ceiling,
    heartbeat_body,
    run_load,
)
from bench.heartbeats_profile import Sampler, py_spy, server_profile  # noqa: E402
from bench.heartbeats_servers import Servers, ServerSpec  # noqa: E402
from bench.heartbeats_sweep import run_sweep  # noqa: E402

__all__ = [  # what bench/sweep_storm.py takes from here
    "BenchError",
    "bench_env",
    "drop_database",
    "find_services",
    "flush_redis",
    "load_line",
    "machine_line",
    "recreate_database",
]

TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0


# --- environment ----------------------------------------------------------------------------


def find_services(
    workdir: Path, stack: contextlib.ExitStack, database_url: str | None, redis_url: str | None
) -> tuple[str, str, tuple[int, ...]]:
    """PostgreSQL and Redis: the given ones, else private ones started here.

    Returns the bench database's URL, the Redis URL and the private redis-server's pid.
    Under daphne every in-flight request holds a database connection of its own, so
    64 simulated agents would take most of a shared server's 100 connections from
    everyone else: the private PostgreSQL allows 300.
    """
    from portal.lib.localservices import redis_answers

    if not database_url:
        database_url = _env.start_private_postgres(workdir, stack, max_connections=300)
    pids: tuple[int, ...] = ()
    if redis_url:
        if not redis_answers(redis_url):
            raise BenchError(f"Redis at {redis_url} does not answer")
    else:
        # A private server: shared ones have other users' databases (tests pick theirs).
        redis_url, pid = _env.private_redis(workdir / "redis", stack)
        pids = (pid,)
    return _env.with_path(database_url, f"/{BENCH_DB_NAME}"), redis_url, pids


def drop_database(database_url: str) -> None:
    _env.drop_database(database_url, BENCH_DB_NAME)


def recreate_database(database_url: str) -> None:
    _env.recreate_database(database_url, BENCH_DB_NAME)


def flush_redis(redis_url: str) -> None:
    _env.flush_redis(redis_url)


def bench_env(database_url: str, redis_url: str, workdir: Path) -> dict:
    return {
        **os.environ,
        **_env.portal_env(database_url, redis_url, workdir),
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def machine_line() -> str:
    import daphne
    import django
    import uvicorn

    pg_version, redis_version = _env.service_versions()
    return (
        f"{_env.code_line()}\n"
        f"machine: {_env.platform_line()}, PostgreSQL {pg_version}, Redis "
        f"{redis_version}, Django {django.get_version()}, daphne {daphne.__version__}, "
        f"uvicorn {uvicorn.__version__}"
    )


def create_load_agents(count: int) -> list[SimAgent]:
    from incidents.actions import create_agent

    rng = random.Random(1)
    agents = []
    for i in range(count):
        agent, secret = create_agent(name=f"bench-hb-{i:04d}")
        agents.append(SimAgent(agent.pk, agent.name, secret, heartbeat_body(rng)))
    return agents


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (default 200)")
    parser.add_argument(
        "--servers",
        type=ServerSpec.parse,
        nargs="+",
        default=[
            ServerSpec("daphne", 2, conn_max_age=0),
            ServerSpec("daphne", 2, conn_max_age=0, fast=True),
            ServerSpec("gateway", 2, conn_max_age=0, fast=True),
        ],
        help="how to serve the portal (default: daphne:2:age=0 daphne:2:age=0:app=fast "
        "gateway:2:age=0); see ServerSpec",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--database-url",
        help="an existing PostgreSQL server to use (default: a private cluster started here)",
    )
    parser.add_argument(
        "--redis-url",
        help="an existing Redis database to use, flushed at start and end (default: a "
        "private redis-server started here)",
    )
    parser.add_argument("--sweep-agents", type=int, default=100_000)
    parser.add_argument("--overdue-percent", type=float, default=1.0)
    parser.add_argument("--skip-load", action="store_true", help="only the sweep")
    parser.add_argument("--skip-sweep", action="store_true", help="only the load runs")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    return parser.parse_args(argv)


def run_matrix(
    args, env: dict, workdir: Path, agents: list[SimAgent], config: LoadConfig
) -> list[Run]:
    runs: list[Run] = []
    for spec in args.servers:
        with Servers(spec, env, workdir / "logs") as servers:
            check_once(servers.ports[0], agents[0])
            for concurrency in args.concurrency:
                # Heartbeat then bare, back to back: load from elsewhere falls on both alike.
                for kind in ("heartbeat", "bare", "lean") if spec.fast else ("heartbeat", "bare"):
                    seen = servers.exceptions()
                    run = run_load(
                        kind,
                        servers.ports,
                        agents,
                        concurrency,
                        config,
                        server=spec.label,
                        server_pids=servers.pids,
                    )
                    runs.append(run)
                    print(run.line(), flush=True)
                    for sample in run.samples:
                        print(f"    error: {sample}")
                    for line, count in (servers.exceptions() - seen).most_common(3):
                        print(f"    server log, {count}x: {line}")
    return runs


def summarize(runs: list[Run]) -> tuple[Run | None, bool]:
    print("\nheartbeat / bare at the same server set-up and connections:")
    pairs: dict[tuple[str, int], dict[str, Run]] = defaultdict(dict)
    for run in runs:
        pairs[(run.server, run.concurrency)][run.kind] = run
    for (server, concurrency), pair in pairs.items():
        hb = pair.get("heartbeat")
        for name in ("bare", "lean"):
            bare = pair.get(name)
            if hb and bare and bare.rate:
                print(
                    f"  {server:<15} {concurrency:>3} conns vs {name}: throughput "
                    f"x{hb.rate / bare.rate:.2f}, p50 x{hb.pct(50) / bare.pct(50):.2f}, "
                    f"p99 x{hb.pct(99) / bare.pct(99):.2f}"
                )
    heartbeats = [r for r in runs if r.kind == "heartbeat" and r.errors == 0]
    within = [r for r in heartbeats if r.pct(99) < TARGET_P99_MS]
    best = max(within or heartbeats, key=lambda r: r.rate, default=None)
    bares = [r for r in runs if r.kind == "bare"]
    bare_best = max([r for r in bares if not r.errors] or bares, key=lambda r: r.rate, default=None)
    if best is None:
        print("\nVERDICT heartbeats: no error-free heartbeat run")
        return None, False
    met = best.rate >= TARGET_RATE and best.pct(99) < TARGET_P99_MS
    print(
        f"\nVERDICT heartbeats: best {best.rate:.0f}/s at p50 {best.pct(50):.1f} ms, p99 "
        f"{best.pct(99):.1f} ms ({best.server}, {best.concurrency} connections"
        f"{'' if within else '; no run had p99 under target'}); target >= {TARGET_RATE:.0f}/s "
        f"with p99 < {TARGET_P99_MS:.0f} ms: {'MET' if met else 'MISSED'}"
    )
    if bare_best:
        print(
            f"bare view best: {bare_best.rate:.0f}/s at p99 {bare_best.pct(99):.1f} ms "
            f"({bare_best.server}, {bare_best.concurrency} connections)"
        )
    leans = [r for r in runs if r.kind == "lean"]
    lean_best = max([r for r in leans if not r.errors] or leans, key=lambda r: r.rate, default=None)
    if lean_best:
        print(
            f"lean bare (raw ASGI, one UPDATE, persistent connection) best: "
            f"{lean_best.rate:.0f}/s at p99 {lean_best.pct(99):.1f} ms ({lean_best.server}, "
            f"{lean_best.concurrency} connections)"
        )
    cores = len(os.sched_getaffinity(0))
    for label, top in (("heartbeat", best), ("bare view", bare_best), ("lean bare", lean_best)):
        if top is None or not top.rate:
            continue
        parts = ("server", "postgres", "redis", "generator")
        total = sum(top.per_request(what) for what in parts)
        print(
            f"CPU per request, {label} at its best: "
            + " + ".join(f"{top.per_request(what):.2f} {what}" for what in parts)
            + f" = {total:.1f} ms: {cores} cores cap it near {cores * 1000 / total:.0f}/s"
            " even with the machine to itself"
        )
    return best, met


def profile_servers(
    args, env: dict, workdir: Path, agents: list[SimAgent], config: LoadConfig, best: Run
) -> None:
    """Extra runs (heartbeat, then bare) with py-spy on every server process."""
    spec = next(s for s in args.servers if s.label == best.server)
    if py_spy() is None:
        print("\n(no py-spy, so no profile; `make bench-heartbeats` installs it)")
        return
    with Servers(spec, env, workdir / "logs") as servers:
        check_once(servers.ports[0], agents[0])
        for kind in ("heartbeat", "bare"):
            sampler = Sampler(servers.pids(), workdir, f"servers-{kind}", gil=True)
            run = run_load(
                kind,
                servers.ports,
                agents,
                best.concurrency,
                config,
                server=spec.label,
                server_pids=servers.pids,
            )
            stacks = sampler.stop()
            print(
                f"\nProfile, {kind} (py-spy --gil at 200 Hz on every server process, {spec.label}, "
                f"{best.concurrency} connections; this run, under the sampler: {run.rate:.0f}/s, "
                f"p99 {run.pct(99):.1f} ms, {run.per_request('server'):.2f} ms server CPU per "
                f"request, {run.sessions / max(len(run.latencies), 1):.2f} new DB connections "
                "per request):"
            )
            print("\n".join(server_profile(stacks, run.per_request("server"))))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    (workdir / "logs").mkdir()

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        database_url, redis_url, redis_pids = find_services(
            workdir, stack, args.database_url, args.redis_url
        )
        recreate_database(database_url)
        stack.callback(drop_database, database_url)
        stack.callback(flush_redis, redis_url)
        flush_redis(redis_url)
        env = bench_env(database_url, redis_url, workdir)
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        print(machine_line())
        print(load_line("at start"))
        if not args.skip_load:
            agents = create_load_agents(args.agents)
            print(
                f"\n== Heartbeat ingestion: {args.agents} agents, {args.duration:g} s measured "
                f"after {args.warmup:g} s warm-up, {args.generators} generator processes, "
                "DB_CONN_MAX_AGE=60 and access log on unless the set-up says otherwise =="
            )
            print(CPU_NOTE)
            print(HEADER)
            config = LoadConfig(args.generators, args.warmup, args.duration, redis_pids)
            short = LoadConfig(args.generators, args.warmup, min(args.duration, 10.0))
            null = generator_ceiling(agents, max(args.concurrency), short)
            print(null.line())
            print(
                f"    generator ceiling against a null server: {null.rate:.0f} req/s, "
                f"{1000 * null.per_request('generator'):.0f} µs of generator CPU per request"
            )
            runs = run_matrix(args, env, workdir, agents, config)
            print(load_line("after the load runs"))
            best, met = summarize(runs)
            if best and (args.profile == "always" or (args.profile == "auto" and not met)):
                profile_servers(args, env, workdir, agents, config, best)
        if not args.skip_sweep:
            run_sweep(args, workdir)
        print(f"\n{load_line('at end')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
