"""The dashboard: an inbox for the person looking at it, then each app's panels.

Apps register two kinds of providers here (from their ``dashboard.py``):

- ``@panel``: a function of the request returning one panel's context (its
  ``template``, and optionally ``area`` "inbox" or "main" and an ``order``);
- ``@approvals``: a function of the request returning the requests of one kind
  waiting for signatures, as ``ApprovalItem`` rows built with ``approval_items``.

Whatever the number of rows, the dashboard costs a fixed number of queries:
providers read in bulk, and ``approval_items`` reads every signature of one kind
of request in a single query instead of asking ``portal.approvals`` per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.http import HttpRequest

from portal import approvals
from portal.choices import Impact
from portal.models import Approval

PanelFn = Callable[[HttpRequest], dict]
ApprovalsFn = Callable[[HttpRequest], list["ApprovalItem"]]
_PANELS: list[PanelFn] = []
_APPROVALS: list[ApprovalsFn] = []

#: How many waiting requests of one kind the inbox lists (the rest: "N more" links).
INBOX_LIMIT = 25


def panel(fn: PanelFn) -> PanelFn:
    """Decorator: register a dashboard panel provider."""
    _PANELS.append(fn)
    return fn


def approvals_source(fn: ApprovalsFn) -> ApprovalsFn:
    """Decorator: register a provider of requests waiting for signatures."""
    _APPROVALS.append(fn)
    return fn


def collect_panels(request: HttpRequest) -> list[dict]:
    found = [fn(request) for fn in _PANELS]
    return sorted(found, key=lambda p: (p.get("area", "main") != "inbox", p.get("order", 50)))


@dataclass
class ApprovalItem:
    """One request waiting for signatures, as the person looking at the inbox may act on it.

    ``can_sign``/``can_reject`` follow the object page's rules (``portal.approvals``:
    approver role, not the requester, not already signed; the page's own extra rules
    such as a failed pre-flight via ``blocked``); the buttons post to the object
    page's own endpoints, which check everything again.
    """

    key: str  # unique on the page, e.g. "pra-12"
    kind: str  # "Remediation", "Restore", "Patch"
    title: str
    url: str
    impact: str
    created: datetime
    requester: str
    signers: list[str]
    required: int
    can_sign: bool
    can_reject: bool
    why_not: str  # why this person cannot sign, in words ("" when they can)
    form: dict[str, Any]  # the context of the approval forms
    form_template: str = "portal/_approval_item_forms.html"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.signers)

    @property
    def version(self) -> str:
        """Changes whenever what the person would act on changes (live re-sync)."""
        return f"{self.form.get('fingerprint', '')[:12]}:{self.count}:{int(self.can_sign)}"


def rules(request: HttpRequest | None = None) -> dict[str, Any]:
    """The rule of every impact: three reads per request, whatever the number of rows."""
    cached = getattr(request, "_approval_rules", None)
    if cached is None:
        cached = {impact: approvals.rule_for(impact) for impact in Impact.values}
        if request is not None:
            # A per-request memo; HttpRequest's stubs list a closed set of attributes.
            request._approval_rules = cached  # type: ignore[attr-defined]
    return cached


def signatures_of(objs: Iterable[Any]) -> dict[tuple[int, str], list[Approval]]:
    """Every signature on ``objs`` (one model), by (content type id, object id): one query."""
    objs = list(objs)
    if not objs:
        return {}
    content_type = ContentType.objects.get_for_model(objs[0], for_concrete_model=False)
    found: dict[tuple[int, str], list[Approval]] = {}
    for signature in Approval.objects.filter(
        content_type=content_type, object_id__in=[str(o.pk) for o in objs]
    ).select_related("approver"):
        found.setdefault((signature.content_type_id, signature.object_id), []).append(signature)
    return found


def signing_state(obj, user, signatures: list[Approval]) -> tuple[list[str], bool, str]:
    """(distinct signers of the current fingerprint, may ``user`` sign, why not).

    The same decision as ``approvals.tally`` and ``approvals.check_signer`` (with the
    confirmation the person will type), from signatures read in bulk."""
    current = obj.approval_fingerprint()
    names: list[str] = []
    signed_by_user = False
    for signature in signatures:
        if signature.fingerprint != current:
            continue
        if signature.approver.get_username() not in names:
            names.append(signature.approver.get_username())
        if signature.approver_id == user.pk:
            signed_by_user = True
    if not (user.is_authenticated and user.is_active):
        return names, False, "sign in to approve"
    if not user.has_perm(approvals.APPROVE_PERMISSION):
        return names, False, "needs the approver role"
    if obj.approval_requester_id is not None and obj.approval_requester_id == user.pk:
        return names, False, "you asked for it: someone else approves"
    if signed_by_user:
        return names, False, "you signed"
    return names, True, ""


def approval_items(
    request: HttpRequest,
    objs: list[Any],
    *,
    build: Callable[[Any, list[str], bool, str, Any], ApprovalItem],
) -> list[ApprovalItem]:
    """Build one ``ApprovalItem`` per object with ``build(obj, signers, can_sign, why_not,
    rule)``, reading all their signatures at once."""
    table = rules(request)
    signatures = signatures_of(objs)
    items = []
    for obj in objs:
        content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
        rule = table[obj.approval_impact]
        signers, can_sign, why_not = signing_state(
            obj, request.user, signatures.get((content_type.pk, str(obj.pk)), [])
        )
        items.append(build(obj, signers, can_sign, why_not, rule))
    return items


def collect_approvals(request: HttpRequest) -> dict[str, list[ApprovalItem]]:
    """Requests waiting for signatures: those this person may sign, and the others."""
    everything = [item for fn in _APPROVALS for item in fn(request)]
    everything.sort(key=lambda i: (i.impact != Impact.HIGH, i.created))
    return {
        "mine": [i for i in everything if i.can_sign],
        "others": [i for i in everything if not i.can_sign],
    }
