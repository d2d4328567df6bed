"""RQ entry points for remediation. Thin: they take ids and call pra.actions."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import paramiko
from django.conf import settings
from rq import get_current_job

from portal.lib import ssh
from pra import actions, transport
from pra.catalog import parse_before
from pra.choices import ActionStatus, FailureCause
from pra.models import PRAAction

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0  # seconds between heartbeats while a command runs


def preflight_action(action_id: int) -> str:
    """Dry run over SSH: connectivity, whitelist and sudo, without side effects."""
    action = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if action is None:
        return "gone"
    # A result for a host that was edited meanwhile is dropped by record_preflight.
    revision = action.host.revision
    command = "--dry-run " + action.spec.wire_command(action.params)
    try:
        # The dry run's check may take a while on a slow host (podman, logrotate --debug).
        result = transport.run_exec(action.host, command, command_timeout=settings.PRA_DIAG_TIMEOUT)
        ok = result.exit_code == 0
        output = (result.stdout + result.stderr).strip() or f"exit {result.exit_code}"
        if not ok and result.exit_code == actions.DENIED_EXIT:
            output = "denied by the target's wrapper: " + output
    except ssh.SSHError as exc:
        ok, output = False, f"{exc.__class__.__name__}: {exc}"
    except Exception as exc:
        # Whatever went wrong, the pre-flight ends FAILED with a reason, never PENDING.
        logger.exception("pre-flight of action %s crashed", action_id)
        ok, output = (
            False,
            f"pre-flight could not run ({exc.__class__.__name__}); see the worker log",
        )
    actions.record_preflight(action_id, ok=ok, output=output, host_revision=revision)
    return "ok" if ok else "failed"


def execute_action(action_id: int) -> str:
    """Claim, run, record, verify. Connection failures are retried only before start."""
    job = get_current_job()
    job_id = job.id if job is not None else actions.execution_job_id(action_id)
    action = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if action is None or action.status != ActionStatus.APPROVED:
        return "not-claimed"
    # Connect while the claim runs: nothing is sent to the target before the claim is won.
    with ThreadPoolExecutor(max_workers=1) as pool:
        connecting = pool.submit(transport.open_exec_session, action.host)
        claimed = actions.claim_action(action_id, job_id=job_id)
        if claimed is None:
            _discard(connecting)
            logger.info("action %s not claimed (taken, expired or not approved)", action_id)
            return "not-claimed"
        return _run_claimed(claimed, job_id, connecting)


def _discard(connecting: Future) -> None:
    try:
        connecting.result().close()
    except ssh.SSHError:
        pass


def _run_claimed(action: PRAAction, job_id: str, connecting: Future) -> str:
    action_id = action.pk
    spec = action.spec
    command = spec.wire_command(action.params)
    last_beat = time.monotonic()

    def on_tick() -> None:
        # Heartbeats on a timer, not on output: a quiet command is not a lost worker.
        nonlocal last_beat
        if time.monotonic() - last_beat > HEARTBEAT_EVERY:
            actions.heartbeat(action_id)
            last_beat = time.monotonic()

    def on_output(chunk: str) -> None:
        actions.publish_output(action, chunk)

    attempts = 0
    while True:
        attempts += 1
        try:
            session = (
                connecting.result() if attempts == 1 else transport.open_exec_session(action.host)
            )
        except ssh.HostKeyMismatch as exc:
            return _failed(action_id, FailureCause.HOST_KEY_MISMATCH, exc, attempts)
        except ssh.KeyFileError as exc:
            return _failed(action_id, FailureCause.CONFIG, exc, attempts)
        except Exception as exc:
            # Not an SSHError: a library error outside the classified path. Nothing was
            # sent yet, so it counts as unreachable (and may be retried).
            if not isinstance(exc, ssh.SSHError):
                logger.exception("action %s: unexpected error while connecting", action_id)
                exc = ssh.Unreachable(f"connection failed: {exc.__class__.__name__}: {exc}")
            if not isinstance(exc, ssh.AuthFailed) and attempts < settings.PRA_CONNECT_ATTEMPTS:
                # Backoff between connection attempts; the command never started.
                actions.heartbeat(action_id)
                time.sleep(settings.PRA_RETRY_BACKOFF * 2 ** (attempts - 1))
                continue
            return _failed(action_id, FailureCause.UNREACHABLE, exc, attempts)
        break

    with session:
        # Last check before anything is sent: the run is still ours (not reaped meanwhile).
        if not actions.still_running(action_id, job_id):
            logger.warning("action %s: claim lost before the command was sent", action_id)
            return "claim-lost"
        try:
            result = session.exec(
                command, command_timeout=spec.timeout, max_output=settings.PRA_MAX_OUTPUT,
                on_output=on_output, on_tick=on_tick,
            )  # fmt: skip
        except ssh.CommandTimeout as exc:
            return _failed(action_id, FailureCause.TIMEOUT, exc, attempts)
        except (ssh.SSHError, paramiko.SSHException, OSError, EOFError) as exc:
            # The command may have started: never retried.
            detail = f"connection lost after the command was sent: {exc}"
            return _failed(action_id, FailureCause.UNREACHABLE, detail, attempts)
        except Exception as exc:
            logger.exception("action %s: unexpected error while running", action_id)
            detail = (
                f"the run failed unexpectedly after the command was sent ({exc!r}); not retried"
            )
            return _failed(action_id, FailureCause.UNREACHABLE, detail, attempts)

    finished = actions.finish_execution(action_id, result=result, attempts=attempts)
    if finished is None or finished.status != ActionStatus.COMPLETED:
        return "failed"
    verify_action(action_id)
    return "completed"


def _failed(action_id: int, cause: str, error: Exception | str, attempts: int) -> str:
    actions.finish_execution(action_id, cause=cause, detail=str(error), attempts=attempts)
    return "failed"


def verify_action(action_id: int) -> str:
    """Run the catalog's probe through pra-diag: a few tries, since services take a moment;
    for a probe with ``within`` (a reboot), until that many seconds have passed."""
    action = PRAAction.objects.select_related("host").get(pk=action_id)
    probe = action.spec.probe
    if probe is None:
        actions.record_verification(action_id, verified=None, output="no probe for this action")
        return "skipped"
    before = parse_before(action.stdout)
    if probe.needs_before and before is None:
        actions.record_verification(
            action_id,
            verified=False,
            output="the target did not report its state before the action (no PRA-BEFORE "
            "line: wrappers older than the portal? render and install them again)",
        )
        return "not-verified"
    argv = probe.argv(action.params, before)
    output = ""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            result = transport.run_diag(action.host, argv)
            output = (result.stdout + result.stderr).strip()
            ok = result.exit_code == 0 and probe.matches(result.stdout)
        except ssh.SSHError as exc:
            ok, output = False, f"{exc.__class__.__name__}: {exc}"
        waited = time.monotonic() - started
        if ok:
            if probe.within:
                output += f"\n(back after {waited:.0f} s; bound {probe.within} s)"
            actions.record_verification(action_id, verified=True, output=output)
            return "verified"
        if probe.within:
            if waited >= probe.within:
                output += f"\n(gave up after {waited:.0f} s; bound {probe.within} s)"
                break
            time.sleep(min(max(settings.PRA_RETRY_BACKOFF, 1.0), probe.within - waited))
            continue
        if attempt >= settings.PRA_VERIFY_ATTEMPTS:
            break
        time.sleep(settings.PRA_RETRY_BACKOFF)  # give the service a moment to come up
    actions.record_verification(action_id, verified=False, output=output)
    return "not-verified"


def sweep() -> dict:
    """Every 30 s: lost or overdue pre-flights, expire, reap lost runs, re-enqueue approved
    actions whose job vanished, release actions whose maintenance window opened."""
    return {
        "windows": actions.release_waiting(),
        "preflights": actions.reconcile_preflights(),
        "expired": actions.expire_due(),
        "reaped": actions.reap_lost_runs(),
        "requeued": actions.reconcile_approved(),
    }
