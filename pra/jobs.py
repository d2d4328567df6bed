"""RQ entry points for remediation. Thin: they take ids and call pra.actions."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from rq import get_current_job

from portal.lib import ssh
from pra import actions, transport
from pra.choices import FailureCause
from pra.models import PRAAction

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0  # seconds between heartbeats while a command runs


def preflight_action(action_id: int) -> str:
    """Dry run over SSH: connectivity, whitelist and sudo, without side effects."""
    action = PRAAction.objects.select_related("host").filter(pk=action_id).first()
    if action is None:
        return "gone"
    command = "--dry-run " + action.spec.wire_command(action.params)
    try:
        result = transport.run_exec(action.host, command, command_timeout=30)
        ok = result.exit_code == 0
        output = (result.stdout + result.stderr).strip() or f"exit {result.exit_code}"
        if not ok and result.exit_code == actions.DENIED_EXIT:
            output = "denied by the target's wrapper: " + output
    except ssh.SSHError as exc:
        ok, output = False, f"{exc.__class__.__name__}: {exc}"
    actions.record_preflight(action_id, ok=ok, output=output)
    return "ok" if ok else "failed"


def execute_action(action_id: int) -> str:
    """Claim, run, record, verify. Connection failures are retried only before start."""
    job = get_current_job()
    job_id = job.id if job is not None else actions.execution_job_id(action_id)
    action = actions.claim_action(action_id, job_id=job_id)
    if action is None:
        logger.info("action %s not claimed (already taken, expired or not approved)", action_id)
        return "not-claimed"
    spec = action.spec
    command = spec.wire_command(action.params)
    last_beat = time.monotonic()

    def on_output(chunk: str) -> None:
        nonlocal last_beat
        actions.publish_output(action, chunk)
        if time.monotonic() - last_beat > HEARTBEAT_EVERY:
            actions.heartbeat(action_id)
            last_beat = time.monotonic()

    attempts = 0
    while True:
        attempts += 1
        started = False

        def on_start() -> None:
            nonlocal started
            started = True

        try:
            result = transport.run_exec(
                action.host,
                command,
                command_timeout=spec.timeout,
                on_start=on_start,
                on_output=on_output,
            )
        except ssh.HostKeyMismatch as exc:
            actions.finish_execution(
                action_id, cause=FailureCause.HOST_KEY_MISMATCH, detail=str(exc), attempts=attempts
            )
            return "failed"
        except ssh.KeyFileError as exc:
            actions.finish_execution(
                action_id, cause=FailureCause.CONFIG, detail=str(exc), attempts=attempts
            )
            return "failed"
        except ssh.CommandTimeout as exc:
            actions.finish_execution(
                action_id, cause=FailureCause.TIMEOUT, detail=str(exc), attempts=attempts
            )
            return "failed"
        except ssh.SSHError as exc:
            retryable = (
                not started
                and not isinstance(exc, ssh.AuthFailed)
                and attempts < settings.PRA_CONNECT_ATTEMPTS
            )
            if retryable:
                # Backoff between connection attempts; the command never started.
                actions.heartbeat(action_id)
                time.sleep(settings.PRA_RETRY_BACKOFF * 2 ** (attempts - 1))
                continue
            cause = FailureCause.UNREACHABLE if not started else FailureCause.TIMEOUT
            actions.finish_execution(action_id, cause=cause, detail=str(exc), attempts=attempts)
            return "failed"
        break

    finished = actions.finish_execution(action_id, result=result, attempts=attempts)
    if finished is None or finished.status != "COMPLETED":
        return "failed"
    verify_action(action_id)
    return "completed"


def verify_action(action_id: int) -> str:
    """Run the catalog's probe through pra-diag; a few tries, since services take a moment."""
    action = PRAAction.objects.select_related("host").get(pk=action_id)
    probe = action.spec.probe
    if probe is None:
        actions.record_verification(action_id, verified=None, output="no probe for this action")
        return "skipped"
    argv = probe.argv(action.params)
    output = ""
    for attempt in range(settings.PRA_VERIFY_ATTEMPTS):
        try:
            result = transport.run_diag(action.host, argv)
            output = (result.stdout + result.stderr).strip()
            ok = result.exit_code == 0 and probe.matches(result.stdout)
        except ssh.SSHError as exc:
            ok, output = False, f"{exc.__class__.__name__}: {exc}"
        if ok:
            actions.record_verification(action_id, verified=True, output=output)
            return "verified"
        if attempt + 1 < settings.PRA_VERIFY_ATTEMPTS:
            time.sleep(settings.PRA_RETRY_BACKOFF)  # give the service a moment to come up
    actions.record_verification(action_id, verified=False, output=output)
    return "not-verified"


def sweep() -> dict:
    """Every 30 s: expire, reap lost runs, re-enqueue approved actions whose job vanished."""
    return {
        "expired": actions.expire_due(),
        "reaped": actions.reap_lost_runs(),
        "requeued": actions.reconcile_approved(),
    }
