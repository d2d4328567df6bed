"""Remediation latency: approval → command started / COMPLETED, against bare SSH and ansible.

`make bench-pra` runs this. It builds its own world and tears it down again:
a ``portal_bench`` PostgreSQL database (dropped and re-created), Redis
database 14 (flushed), a loopback sshd target (pra.devtarget) registered as
a host, and real ``manage.py rqworker pra`` processes (one at a time).

- portal: propose ``restart_unbound``, approve it; t0 is taken right after
  the approval transaction commits (before its on-commit hooks: live event,
  enqueue). "started" is the target's own timestamp, written by a bench
  ``systemctl`` stand-in the moment the command starts there; "COMPLETED"
  is the action's ``finished_at`` (the worker's clock, same machine).
- bare ``portal.lib.ssh.run_command`` and a bare paramiko ``SSHClient``
  (RejectPolicy, pinned key, paramiko defaults: Nagle left on), from connect.
- ``ansible all -m raw`` (ansible-core), a fresh SSH connection per run.

The paths are interleaved (each portal run is followed by one run of every
bare path, in blocks that alternate the worker classes), so load from other
processes on the machine falls on all of them alike. Every figure is a
wall-clock difference on one machine: time.time(), bash's EPOCHREALTIME and
Django's timezone.now() all read CLOCK_REALTIME. A benchmark that prints
figures, not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))


from bench import _env  # noqa: E402 - after the path fix above
from bench._env import BenchError, wait_for  # noqa: E402
from bench.pra_baselines import Ansible, Bare  # noqa: E402
from bench.pra_portal import (  # noqa: E402
    PORTAL_PHASES,
    RATIONALE,
    WIRE_COMMAND,
    Portal,
    Series,
    Stamps,
    WorkerProcess,
    portal_durations,
    portal_run,
    setup_portal,
)
from bench.pra_profile import (  # noqa: E402
    HORSE_PHASES,
    profile_portal,
    profiled_approvals,
    profiled_execute,
)

__all__ = [  # the pieces, importable from here as before the split
    "RATIONALE",
    "BenchError",
    "Portal",
    "portal_run",
    "profiled_approvals",
    "profiled_execute",
    "setup_portal",
    "wait_for",
]

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/portal"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BENCH_DB_NAME = "portal_bench"
BENCH_REDIS_DB = 14
TARGET_RATIO = 1.25
WORKER_CLASSES = ("rq.Worker", "rq.SimpleWorker")


# Goes in front of the target's systemctl stand-in: stamps the moment a restart starts
# (bash's EPOCHREALTIME is a builtin, so no extra fork before the stamp), then execs the
# dev target's own stand-in, whose state the verification probe reads (restarted since
# pra-run's PRA-BEFORE line).
SYSTEMCTL_STAMP = """#!/bin/bash
# systemctl stand-in of bench/pra_latency.py: stamps when a restart starts.
export LC_ALL=C
if [[ ${1-} == restart ]]; then
    printf '%s\\n' "$EPOCHREALTIME" >>@@STAMP@@
fi
exec @@STANDIN@@ "$@"
"""


# --- figures ------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


# --- environment --------------------------------------------------------------------


def find_services(workdir: Path, stack: contextlib.ExitStack) -> tuple[str, str]:
    """PostgreSQL and Redis at DATABASE_URL/REDIS_URL (or the defaults), else private ones."""
    from portal.lib.localservices import postgres_answers, redis_answers

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE
    if not database_url.startswith("postgres") or not postgres_answers(database_url):
        database_url = _env.throwaway_postgres(workdir / "services", stack)
        print(f"Started a throwaway PostgreSQL: {database_url}")
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if not redis_answers(redis_url):
        redis_url, _ = _env.private_redis(workdir / "services", stack)
        print(f"Started a throwaway Redis: {redis_url}")
    return (
        _env.with_path(database_url, f"/{BENCH_DB_NAME}"),
        _env.with_path(redis_url, f"/{BENCH_REDIS_DB}"),
    )


def bench_env(database_url: str, redis_url: str, workdir: Path, target) -> dict[str, str]:
    return {
        **_env.portal_env(database_url, redis_url, workdir),
        "PRA_PREFLIGHT": "0",  # measure the execution only, not the dry run at proposal
        "PRA_SSH_KEY_FILE": str(target.exec_key_path),
        "PRA_DIAG_SSH_KEY_FILE": str(target.diag_key_path),
    }


def install_stamp_standin(target, stamp_path: Path) -> None:
    import shlex

    script = target.standins_dir / "systemctl"
    standin = script.with_name("systemctl-devtarget")
    script.rename(standin)
    text = SYSTEMCTL_STAMP.replace("@@STAMP@@", shlex.quote(str(stamp_path)))
    script.write_text(text.replace("@@STANDIN@@", shlex.quote(str(standin))))
    script.chmod(0o755)


def machine_line() -> str:
    import paramiko
    import rq

    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    pg_version, redis_version = _env.service_versions()
    return (
        f"machine: {_env.platform_line()}, {ssh_version.split(',')[0]}, "
        f"PostgreSQL {pg_version}, Redis {redis_version}, paramiko {paramiko.__version__}, "
        f"rq {rq.__version__}"
    )


def load_line(when: str) -> str:
    return _env.load_line(when, fifteen=False)


# --- report ---------------------------------------------------------------------------


def _row(name: str, what: str, series: Series, key: str) -> str:
    runs = str(series.runs) if name else ""
    return (
        f"  {name:<28} {runs:>4}  {what:<27} {ms(series.median(key)):>9.1f}"
        f" {ms(series.p95(key)):>9.1f}"
    )


def _ratio(top: Series, top_key: str, bottom: Series, bottom_key: str) -> tuple[float, float]:
    return (
        top.median(top_key) / bottom.median(bottom_key),
        top.p95(top_key) / bottom.p95(bottom_key),
    )


COMPARISONS = (
    ("started", "started", "approval→started vs connect→started"),
    ("completed", "done", "approval→COMPLETED vs connect→done"),
)


def report(results: dict) -> None:
    portal, bare, client = results["portal"], results["bare"], results["client"]
    ansible, reuse = results["ansible"], results["reuse"]
    print()
    print(f"  {'path':<28} {'runs':>4}  {'measured':<27} {'median ms':>9} {'p95 ms':>9}")
    for series in portal:
        print(_row(series.label, "approval → command started", series, "started"))
        print(_row("", "approval → COMPLETED", series, "completed"))
    print(_row(bare.label, "connect → command started", bare, "started"))
    print(_row("", "connect → done", bare, "done"))
    print(_row(client.label, "connect → command started", client, "started"))
    print(_row("", "connect → done", client, "done"))
    if ansible is not None:
        print(_row(ansible.label, "start → command started", ansible, "started"))
        print(_row("", "start → done", ansible, "done"))
    print(_row(reuse.label, "exec → command started", reuse, "started"))
    print(_row("", "exec → done (reference only)", reuse, "done"))

    print()
    print("ratios (of medians, of p95s):")
    for series in portal:
        for base in (bare, client):
            for top_key, base_key, what in COMPARISONS:
                med, tail = _ratio(series, top_key, base, base_key)
                print(f"  {series.label} / {base.label}, {what}: {med:.2f}× {tail:.2f}×")
        if ansible is not None:
            for key, what in (("started", "→ started"), ("completed", "→ done/COMPLETED")):
                med, tail = _ratio(ansible, "done" if key == "completed" else key, series, key)
                print(f"  {ansible.label} / {series.label}, {what}: {med:.2f}× {tail:.2f}×")

    print()
    for series in portal:
        for top_key, base_key, what in COMPARISONS:
            med, _ = _ratio(series, top_key, bare, base_key)
            verdict = "MET" if med <= TARGET_RATIO else "NOT MET"
            print(
                f"VERDICT {series.label}: {what} (bare run_command): median {med:.2f}×, "
                f"target ≤ {TARGET_RATIO:.2f}×: {verdict}"
            )


def report_phases(results: dict) -> None:
    bare = results["bare"]
    print()
    print("Where the time goes, median ms (timestamps written by the system under test):")
    for series in results["portal"]:
        print(f"  {series.label}")
        for label, _, _ in PORTAL_PHASES:
            print(f"    {label:<74} {ms(series.median(label)):>7.1f}")
    print(f"  {bare.label}, for comparison")
    print(
        f"    {'connect → exec sent (TCP, handshake, auth, session)':<74}"
        f" {ms(bare.median('exec_sent')):>7.1f}"
    )
    print(
        f"    {'exec sent → command started on target':<74}"
        f" {ms(bare.median('exec_to_started')):>7.1f}"
    )
    for series in results["profiles"]:
        print()
        print(f"Instrumented runs ({series.runs}), median ms: {series.label}")
        for label in HORSE_PHASES:
            print(f"    {label:<74} {ms(series.median(label)):>7.1f}")


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs per path (50)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="warm-up runs per path and worker start (3)"
    )
    parser.add_argument(
        "--blocks", type=int, default=5, help="blocks alternating the worker classes (5)"
    )
    parser.add_argument(
        "--worker-class",
        action="append",
        choices=WORKER_CLASSES,
        help="RQ worker class for the portal runs; repeat for several (default: both)",
    )
    parser.add_argument(
        "--ansible-runs", type=int, default=50, help="ansible runs (~1.5 s each), 0 to skip"
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="instrumented runs inside the worker; auto: when a target is missed",
    )
    parser.add_argument("--profile-runs", type=int, default=20)
    args = parser.parse_args(argv)
    args.worker_class = list(dict.fromkeys(args.worker_class or WORKER_CLASSES))
    if args.runs < 2 or args.warmup < 0 or not 1 <= args.blocks <= args.runs:
        parser.error("need --runs ≥ 2, --warmup ≥ 0 and 1 ≤ --blocks ≤ --runs")
    return args


def _share(total: int, blocks: int, block: int) -> int:
    """Runs of ``total`` that fall in ``block`` when spread evenly over ``blocks``."""
    return total // blocks + (1 if block < total % blocks else 0)


def _missed(series: Series, bare: Series) -> bool:
    return any(
        _ratio(series, top_key, bare, base_key)[0] > TARGET_RATIO
        for top_key, base_key, _ in COMPARISONS
    )


def measure(args, portal: Portal, bare: Bare, ansible: Ansible | None, new_worker) -> dict:
    """Interleave the paths: blocks alternate worker classes; each portal run is followed
    by one run of every bare path; ansible runs close each block."""
    series = {wc: Series(label=f"portal, {wc}") for wc in args.worker_class}
    results: dict[str, Any] = {
        "portal": list(series.values()),
        "bare": Series(label="bare run_command"),
        "client": Series(label="bare paramiko SSHClient"),
        "reuse": Series(label="exec on an open connection"),
        "ansible": Series(label="ansible -m raw") if ansible else None,
        "profiles": [],
    }
    bare_paths = (("bare", bare.run_command), ("client", bare.sshclient), ("reuse", bare.reuse))
    for _ in range(args.warmup):
        for _, once in bare_paths:
            once()
    if ansible is not None:
        for _ in range(min(args.warmup, 2)):
            ansible.run()
    for block in range(args.blocks):
        for worker_class in args.worker_class:
            with new_worker(worker_class) as worker:
                for _ in range(args.warmup):
                    portal_run(portal, worker)
                for _ in range(_share(args.runs, args.blocks, block)):
                    series[worker_class].add(**portal_durations(portal_run(portal, worker)))
                    for key, once in bare_paths:
                        results[key].add(**once())
        if ansible is not None:
            for _ in range(_share(args.ansible_runs, args.blocks, block)):
                results["ansible"].add(**ansible.run())
        print(f"  block {block + 1}/{args.blocks} done", flush=True)

    missed = any(_missed(s, results["bare"]) for s in series.values())
    if args.profile == "always" or (args.profile == "auto" and missed):
        for worker_class in args.worker_class:
            with new_worker(worker_class) as worker:
                results["profiles"].append(
                    profile_portal(portal, worker, runs=args.profile_runs, warmup=args.warmup)
                )
    return results


def run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> None:
    database_url, redis_url = find_services(workdir, stack)
    _env.recreate_database(database_url, BENCH_DB_NAME)
    stack.callback(_env.drop_database, database_url, BENCH_DB_NAME)

    from pra.devtarget import start_local_target

    target = start_local_target(workdir / "target")
    stack.callback(target.stop)
    stamps = Stamps(workdir / "started.stamp")
    install_stamp_standin(target, stamps.path)

    env = bench_env(database_url, redis_url, workdir, target)
    os.environ.update(env)
    import django

    django.setup()
    # This process prints the figures; the product's INFO lines (paramiko, notify) stay out.
    logging.getLogger().setLevel(logging.WARNING)
    from django.core.management import call_command

    from portal.lib.redis import get_redis

    get_redis().flushdb()
    stack.callback(lambda: get_redis().flushdb())
    call_command("migrate", verbosity=0, interactive=False)
    portal = setup_portal(target, stamps)
    bare = Bare(target, stamps)
    stack.callback(bare.close)
    ansible = Ansible(target, stamps, workdir) if args.ansible_runs > 1 else None
    if ansible is not None and not ansible.available:
        print("ansible is not installed in this venv (make bench-pra installs it): skipped")
        ansible = None

    print(machine_line())
    print(load_line("at start"))
    print(
        f"{args.runs} measured runs per path after {args.warmup} warm-up runs (per worker "
        f"start for the portal), in {args.blocks} interleaved blocks; ansible: "
        f"{args.ansible_runs if ansible else 0} runs. Wire command {WIRE_COMMAND!r}, loopback "
        f"sshd, sudo {'on' if target.use_sudo else 'off'}, PRA_PREFLIGHT=0."
    )

    def new_worker(worker_class: str) -> WorkerProcess:
        log_path = workdir / f"worker-{worker_class}.log"
        return WorkerProcess(worker_class, dict(os.environ), log_path)

    results = measure(args, portal, bare, ansible, new_worker)
    print(load_line("at end"))
    report(results)
    report_phases(results)


def main(argv: list[str]) -> int:
    from portal.lib.localservices import ServiceError
    from pra.devtarget import DevTargetError

    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the worker, sshd and database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="pra-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            run(args, workdir, stack)
    except (BenchError, DevTargetError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
