"""Multi-signature approval, shared by every kind of request.

A request (a remediation, a self-healing patch, a restore) is any model that
implements ``Approvable``. This module decides whether a person may sign,
records the signature (one row + one audit event, in the caller's
transaction) and says when enough people have signed. Moving the request's
own status stays with the request's app, in its ``actions.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol, cast

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction

from portal.audit import record
from portal.choices import AuditEventType, Impact
from portal.models import Approval, ApprovalRule

APPROVE_PERMISSION = "portal.approve_action"

# Defaults, also written by the data migration; the admin may change them.
DEFAULT_RULES: dict[str, dict[str, Any]] = {
    Impact.LOW: {
        "required_approvals": 1,
        "require_confirmation": False,
        "allow_auto_approve": True,
    },
    Impact.MEDIUM: {
        "required_approvals": 1,
        "require_confirmation": False,
        "allow_auto_approve": False,
    },
    Impact.HIGH: {
        "required_approvals": 2,
        "require_confirmation": True,
        "allow_auto_approve": False,
    },
}


class Approvable(Protocol):
    pk: Any

    @property
    def approval_impact(self) -> str: ...

    @property
    def approval_requester_id(self) -> int | None: ...

    @property
    def approval_confirmation_text(self) -> str: ...

    def approval_fingerprint(self) -> str: ...


class ApprovalError(Exception):
    """A signature refused; ``code`` says why (for APIs), the message says it to people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Tally:
    approvers: list[str]
    required: int

    @property
    def count(self) -> int:
        return len(self.approvers)

    @property
    def complete(self) -> bool:
        return self.count >= self.required


def fingerprint_of(**content: Any) -> str:
    """Stable hash of what a signer is shown (e.g. action, host, params)."""
    return hashlib.sha256(
        json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def rule_for(impact: str) -> ApprovalRule:
    rule = ApprovalRule.objects.filter(impact=impact).first()
    if rule is None:
        rule = ApprovalRule(impact=impact, **DEFAULT_RULES[impact])
    # HIGH is never weaker than the defaults, whatever the table says.
    if impact == Impact.HIGH:
        rule.required_approvals = max(rule.required_approvals, 2)
        rule.require_confirmation = True
        rule.allow_auto_approve = False
    return rule


def may_auto_approve(impact: str) -> bool:
    """Only LOW impact is ever approved without a person (and only if its rule allows)."""
    return impact == Impact.LOW and rule_for(impact).allow_auto_approve


def _row(obj: Approvable) -> models.Model:
    """``obj`` as the model row Django's content types read (anything with ``_meta``: every
    approvable is a row or stands for one; the protocol can't say so)."""
    return cast(models.Model, obj)


def _signatures(obj: Approvable) -> models.QuerySet[Approval]:
    return Approval.objects.filter(
        content_type=ContentType.objects.get_for_model(_row(obj), for_concrete_model=False),
        object_id=str(obj.pk),
        fingerprint=obj.approval_fingerprint(),
    ).select_related("approver")


def tally(obj: Approvable) -> Tally:
    """Signatures that count: distinct approvers, for the request as it is now."""
    names = []
    for approval in _signatures(obj):
        if approval.approver.get_username() not in names:
            names.append(approval.approver.get_username())
    return Tally(approvers=names, required=required_signatures(obj))


def required_signatures(obj: Approvable) -> int:
    """The impact's rule, plus what the request itself adds (an emergency: one more)."""
    extra = getattr(obj, "approval_extra_signatures", 0)
    return rule_for(obj.approval_impact).required_approvals + extra


def check_signer(obj: Approvable, user, *, fingerprint: str | None, confirmation: str) -> None:
    """Raise ``ApprovalError`` unless ``user`` may sign ``obj`` now, as shown."""
    if user is None or not user.is_authenticated or not user.is_active:
        raise ApprovalError("permission", "Only a signed-in person can approve.")
    if not user.has_perm(APPROVE_PERMISSION):
        raise ApprovalError("permission", "You do not have the approver permission.")
    if obj.approval_requester_id is not None and obj.approval_requester_id == user.pk:
        raise ApprovalError(
            "self_approval", "You proposed this request; someone else must approve it."
        )
    current = obj.approval_fingerprint()
    if fingerprint is not None and fingerprint != current:
        raise ApprovalError(
            "stale", "The request changed since you opened it; review it again before approving."
        )
    rule = rule_for(obj.approval_impact)
    expected = obj.approval_confirmation_text
    if rule.require_confirmation and (confirmation or "").strip() != expected:
        raise ApprovalError(
            "confirmation", f"Type the target's name ({expected}) exactly to confirm."
        )
    if _signatures(obj).filter(approver=user).exists():
        raise ApprovalError("already_signed", "You already approved this request.")


def sign(
    obj: Approvable,
    user,
    *,
    fingerprint: str | None,
    confirmation: str = "",
    comment: str = "",
) -> Tally:
    """Record ``user``'s signature on ``obj``; returns the tally after it.

    Call inside the transaction that holds the request's row lock, so two
    signatures on one request are counted one after the other.
    """
    check_signer(obj, user, fingerprint=fingerprint, confirmation=confirmation)
    try:
        with transaction.atomic():
            Approval.objects.create(
                content_type=ContentType.objects.get_for_model(_row(obj), for_concrete_model=False),
                object_id=str(obj.pk),
                approver=user,
                fingerprint=obj.approval_fingerprint(),
                comment=comment[:500],
            )
    except IntegrityError:
        raise ApprovalError("already_signed", "You already approved this request.") from None
    result = tally(obj)
    record(
        AuditEventType.APPROVAL_SIGNED,
        actor=user,
        subject=_row(obj),
        details={
            "fingerprint": obj.approval_fingerprint(),
            "signatures": result.count,
            "required": result.required,
        },
    )
    return result
