"""`make run`: everything a newcomer needs, in the foreground, stopped by Ctrl-C.

Ensures Redis, migrates, creates demo data, then runs daphne (HTTP +
websockets), one RQ worker and the rq cron scheduler. Imports no Django at
module level: the environment is settled before any child starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from portal.lib.localservices import ServiceError, apt_install, redis_answers, start_redis

BASE_DIR = Path(__file__).resolve().parent.parent
# How long `make run` waits for another apt/dpkg (unattended-upgrades, a second terminal)
# to release the dpkg lock before giving up on installing openssh-server.
APT_LOCK_WAIT = float(os.environ.get("PORTAL_DEMO_APT_WAIT", "180"))
_LOCK_WORDS = ("could not get lock", "dpkg frontend lock", "unable to acquire the dpkg",
               "unable to lock", "is another process using it")  # fmt: skip


def _manage(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind = next((a.split("=", 1)[1] for a in argv if a.startswith("--target=")), "local")
    if kind not in ("local", "vm"):
        print(f"error: --target={kind}: use local (default) or vm", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    var_dir = Path(env.setdefault("PORTAL_VAR_DIR", str(BASE_DIR / "var")))
    var_dir.mkdir(parents=True, exist_ok=True)
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    children: list[tuple[str, subprocess.Popen]] = []

    redis_url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_answers(redis_url):
        if "REDIS_URL" in os.environ:
            print(f"REDIS_URL={redis_url} does not answer; starting a local one instead.")
        try:
            redis_url, proc, _ = start_redis(var_dir, port=None)
            assert proc is not None  # not daemonized: a child of this process
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        children.append(("redis-server", proc))
        print(f"Started a local redis-server at {redis_url} (data under {var_dir}).")
    env["REDIS_URL"] = redis_url
    if kind == "vm":
        target, missing = _start_vm_target(var_dir, env)
        if target is None:
            _stop(children)
            return 1
    else:
        target, missing = _start_demo_target(var_dir, env)

    try:
        _manage("migrate", "--noinput", "-v", "0", env=env)
        _manage("portal_demo", env=env)
    except subprocess.CalledProcessError as exc:
        _stop(children)
        if target is not None:
            target.stop()
        return exc.returncode or 1

    python = sys.executable
    manage = str(BASE_DIR / "manage.py")
    commands = {
        "daphne": [python, "-m", "daphne", "-b", host, "-p", port, "portal.asgi:application"],
        # No fork per job: remediations start ~30 ms sooner (bench/pra_latency.py). The
        # control queue (ticks, sweeps) comes first, so it never waits behind other work
        # for long; backups, which take hours, have a worker of their own.
        "rqworker": [
            python,
            manage,
            "rqworker",
            "control",
            "pra",
            "default",
            "--with-scheduler",
            "--worker-class",
            "portal.lib.worker.SimpleWorker",
        ],
        "rqworker-backups": [python, manage, "rqworker", "backups"],
        "rqcron": [python, manage, "rqcron", "portal.cron"],
    }
    agent_key = var_dir / "demo-agent.key"
    if kind == "local" and target is not None and agent_key.exists():
        # The demo agent reports the target's telemetry file and asks the target's stand-in
        # `systemctl is-active unbound`; it waits for daphne before its first heartbeat.
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        commands["demo-agent"] = [
            python, "-m", "incidents.demo", "--url", f"http://{local}:{port}",
            "--secret-file", str(agent_key), "--state-dir", str(target.state_dir),
            "--period", "15", "--watch-service", "unbound",
        ]  # fmt: skip
    worker_env = {**env, "DB_CONN_MAX_AGE": env.get("DB_CONN_MAX_AGE", "60")}
    for name, argv in commands.items():
        # Own session: Ctrl-C reaches only us, and we stop the children in order.
        child_env = worker_env if name.startswith(("rqworker", "rqcron")) else env
        if name == "demo-agent":
            child_env = {**env, "PATH": f"{target.standins_dir}:{env.get('PATH', '')}"}
        proc = subprocess.Popen(argv, env=child_env, cwd=BASE_DIR, start_new_session=True)
        children.append((name, proc))

    print(f"\nOps Portal running at http://{host}:{port}/  (health: /health)  Ctrl-C stops it.")
    if missing:
        print(f"The demo target is MISSING: {missing}", file=sys.stderr)
    print()
    stopping = False

    def _on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    exit_code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the rest.", file=sys.stderr)
                stopping, exit_code = True, 1
                break
        time.sleep(0.2)
    _stop(children)
    if target is not None:
        target.stop()
    print("Stopped.")
    return exit_code


def _install_sshd(install=None, *, wait: float | None = None, sleep=time.sleep) -> str:
    """Install openssh-server, waiting out another apt/dpkg holding the lock; returns ""
    or why it could not. (``install``/``sleep``: apt and the clock, for tests.)"""
    install = install or (lambda: apt_install("openssh-server"))
    wait = APT_LOCK_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    pause = 5.0
    while True:
        try:
            install()
            return ""
        except ServiceError as exc:
            text = str(exc)
            left = deadline - time.monotonic()
            if not any(word in text.lower() for word in _LOCK_WORDS):
                return f"openssh-server could not be installed: {text.strip()[-600:]}"
            if left <= 0:
                return (
                    "openssh-server could not be installed: another apt/dpkg process held the "
                    f"dpkg lock for {wait:.0f} s (PORTAL_DEMO_APT_WAIT)"
                )
            print(
                f"Another apt/dpkg holds the dpkg lock; retrying the openssh-server install in "
                f"{min(pause, left):.0f} s (giving up in {left:.0f} s)…",
                file=sys.stderr,
            )
            sleep(min(pause, left))
            pause = min(pause * 2, 30.0)


def _start_demo_target(var_dir: Path, env: dict):
    """A loopback sshd running the generated wrappers in demo mode (stand-in systemctl…).

    Returns (target or None, why it is missing: "" when it runs)."""
    from pra.devtarget import DEMO_CONTAINERS, DevTargetError, start_local_target

    if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        why = _install_sshd()
        if why:
            _say_missing(why)
            return None, why
    try:
        target = start_local_target(var_dir / "demo-target")
    except (DevTargetError, OSError, subprocess.CalledProcessError) as exc:
        why = f"its sshd did not start: {exc}"
        _say_missing(why)
        return None, why
    if not (target.state_dir / "units" / "unbound").exists():
        target.set_unit("unbound", "inactive")
    for name in DEMO_CONTAINERS:
        if target.container_state(name) is None:
            target.add_container(name)
    env.setdefault("PRA_SSH_KEY_FILE", str(target.exec_key_path))
    env.setdefault("PRA_DIAG_SSH_KEY_FILE", str(target.diag_key_path))
    env["PORTAL_DEMO_TARGET"] = f"{target.address}:{target.port}"
    env["PORTAL_DEMO_TARGET_KEY"] = target.host_key_line
    env["PORTAL_DEMO_TARGET_USER"] = target.user
    env["PORTAL_DEMO_CONTAINERS"] = ",".join(DEMO_CONTAINERS)
    print(f"Started the demo target (loopback sshd) at {target.address}:{target.port}.")
    return target, ""


def _start_vm_target(var_dir: Path, env: dict):
    """A real Debian guest under QEMU with the portal's wrappers installed (``pra.vmtarget``).

    The first run builds the image (debootstrap, a few minutes); later runs boot the cached
    image in ~20 s. Returns (target or None, why it is missing)."""
    from pra.vmtarget.recipe import ImageBuildError, missing_host_tools
    from pra.vmtarget.target import VMTarget
    from pra.vmtarget.vm import VMError

    try:
        missing = missing_host_tools()
        if missing:
            apt_install(*missing)
        print("Starting the VM target (the first run builds its image: a few minutes)…")
        target = VMTarget(var_dir / "vm-target")
        target.start()
    except (ServiceError, ImageBuildError, VMError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: the VM target did not start: {exc}", file=sys.stderr)
        return None, str(exc)
    env.setdefault("PRA_SSH_KEY_FILE", str(target.exec_key_path))
    env.setdefault("PRA_DIAG_SSH_KEY_FILE", str(target.diag_key_path))
    env["PORTAL_DEMO_TARGET"] = f"{target.address}:{target.port}"
    env["PORTAL_DEMO_TARGET_KEY"] = target.host_key_line
    env["PORTAL_DEMO_TARGET_USER"] = target.user
    env["PORTAL_DEMO_CONTAINERS"] = "web-1"
    print(
        f"The VM target runs at {target.address}:{target.port} (Caddy on "
        f"http://127.0.0.1:{target.http_port}/); it is host 'demo-target'."
    )
    return target, ""


def _say_missing(why: str) -> None:
    print(
        f"\nThe demo target is missing: {why}.\n"
        "The portal runs without it: no host 'demo-target', no demo agent, no containers to "
        "restart. Install openssh-server (sudo apt-get install -y openssh-server) and run "
        "`make run` again.\n",
        file=sys.stderr,
    )


def _stop(children: list[tuple[str, subprocess.Popen]]) -> None:
    # The app processes first, Redis (started first, if at all) last.
    apps = [c for c in children if c[0] != "redis-server"]
    for batch in (apps, [c for c in children if c[0] == "redis-server"]):
        for _, proc in batch:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in batch:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it.", file=sys.stderr)
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
