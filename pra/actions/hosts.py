"""Registering and editing hosts, pinning host keys; edits void approvals that no longer hold."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from portal.audit import Actor, record
from portal.choices import AuditEventType
from portal.lib import ssh
from portal.lib.validation import full_clean_or_refuse
from pra.actions.common import ActionError, _announce, _storable
from pra.actions.preflight import _restart_preflight, _void
from pra.actions.windows import end_wait
from pra.choices import ActionStatus
from pra.models import Host, PRAAction


def add_host(
    *,
    name: str,
    address: str,
    port: int = 22,
    ssh_user: str = "pra",
    host_key: str,
    tags: str = "",
    by: User | Actor | str = "system:cli",
) -> Host:
    """Register a host with the host key the caller has seen and confirmed."""
    try:
        fp = ssh.fingerprint(host_key)
    except ValueError as exc:
        raise ActionError("invalid", f"host key: {exc}") from None
    host = Host(
        name=name,
        address=address,
        port=port,
        ssh_user=ssh_user,
        host_key=host_key.strip(),
        host_key_fingerprint=fp,
        tags=tags,
    )
    full_clean_or_refuse(host, ActionError)
    with transaction.atomic():
        host.save()
        record(
            AuditEventType.HOST_ADDED,
            actor=by,
            subject=host,
            details={"name": name, "address": address, "port": port, "fingerprint": fp},
        )
    return host


HOST_EDITABLE = ("name", "address", "port", "ssh_user", "host_key", "tags", "enabled")


_FIELD_WORDS = {
    "name": "name",
    "address": "address",
    "port": "port",
    "ssh_user": "user",
    "host_key": "host key",
}


def update_host(host: Host | int, *, by: User | Actor | str, **changes: Any) -> Host:
    """Change a host's settings (``HOST_EDITABLE``); one audit event, nothing if unchanged.

    A change of name, address, port, user or host key bumps the host's ``revision``,
    which every approval's fingerprint includes, so an approval given before the edit
    never counts again (not even once the edit is reverted). In the same transaction
    every APPROVED action on the host ends VOIDED ("approval voided: host dns-1 changed
    (address)") and never runs; PROPOSED ones keep waiting, their signatures void,
    their pre-flight run again against the host as it is now. Disabling a host voids
    its APPROVED actions too.
    """
    actor = Actor.of(by)
    unknown = sorted(set(changes) - set(HOST_EDITABLE))
    if unknown:
        raise ActionError("invalid", f"a host has no editable field {', '.join(unknown)}")
    _storable(**{k: v for k, v in changes.items() if isinstance(v, str)})
    fingerprint = None
    if "host_key" in changes:
        try:
            fingerprint = ssh.fingerprint(changes["host_key"])
        except ValueError as exc:
            raise ActionError("invalid", f"host key: {exc}") from None
        changes["host_key"] = changes["host_key"].strip()
    host_id = host.pk if isinstance(host, Host) else host
    with transaction.atomic():
        current = Host.objects.select_for_update().filter(pk=host_id).first()
        if current is None:
            raise ActionError("not_found", f"No host #{host_id}.")
        before = {field: getattr(current, field) for field in changes}
        old_fingerprint = current.host_key_fingerprint
        for field, value in changes.items():
            setattr(current, field, value)
        if fingerprint is not None:
            current.host_key_fingerprint = fingerprint
        full_clean_or_refuse(current, ActionError)
        changed = [f for f in changes if getattr(current, f) != before[f]]
        if not changed:
            if isinstance(host, Host):
                host.refresh_from_db()
            return current
        moved = [f for f in Host.CONNECTION_FIELDS if f in changed]
        if moved:
            current.revision += 1
        current.save()
        voided: list[int] = []
        rerun: list[int] = []
        if moved:
            words = ", ".join(_FIELD_WORDS[f] for f in moved)
            voided, rerun = _void_host_approvals(current, f"changed ({words})", actor)
        elif "enabled" in changed and not current.enabled:
            # Hands off: re-enabling later does not bring an approval back.
            voided, _ = _void_host_approvals(current, "disabled", actor, rerun=False)
        details: dict[str, Any] = {
            field: {"old": str(before[field]), "new": str(getattr(current, field))}
            for field in changed
            if field != "host_key"
        }
        if "host_key" in changed:
            details["host_key"] = {"old": old_fingerprint, "new": current.host_key_fingerprint}
        record(
            AuditEventType.HOST_KEY_PINNED
            if changed == ["host_key"]
            else AuditEventType.HOST_UPDATED,
            actor=actor,
            subject=current,
            details={
                "changes": details,
                "revision": current.revision,
                "voided": voided,
                "preflight_rerun": rerun,
            },
        )
    if isinstance(host, Host):
        host.refresh_from_db()
    return current


def _void_host_approvals(
    host: Host, what: str, actor: Actor, *, rerun: bool = True
) -> tuple[list[int], list[int]]:
    """Void the host's APPROVED actions; re-run its PROPOSED ones' pre-flight."""
    reason = f"approval voided: host {host.name} {what}"
    voided = [
        a.pk
        for a in PRAAction.objects.select_related("host").filter(
            host=host, status=ActionStatus.APPROVED
        )
        if _void(a, reason, actor=actor)
    ]
    # Approved but waiting for their maintenance window: the same, at once.
    for waiting in PRAAction.objects.select_related("host").filter(
        host=host, status=ActionStatus.WAITING
    ):
        if end_wait(waiting, ActionStatus.VOIDED, reason, "host_changed", actor=actor):
            voided.append(waiting.pk)
    rerun_ids: list[int] = []
    if not rerun:
        return voided, rerun_ids
    for waiting in PRAAction.objects.select_related("host").filter(
        host=host, status=ActionStatus.PROPOSED
    ):
        if settings.PRA_PREFLIGHT:
            _restart_preflight(waiting, actor, f"host {host.name} {what}")
            rerun_ids.append(waiting.pk)
        else:
            _announce(waiting, f"host {host.name} {what}: signatures void", approvals=0)
    return voided, rerun_ids


def pin_host_key(host: Host, host_key: str, *, by: User | Actor | str) -> Host:
    """Replace a host's pinned key (after a known re-install): ``update_host`` rules apply."""
    return update_host(host, by=by, host_key=host_key)
