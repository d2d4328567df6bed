"""The approval UI, shared by every kind of request (remediations, patches, restores).

A model admin mixes in ``ApprovalAdminMixin`` and names the two actions-layer
functions that sign and reject; it gets POST-only, CSRF-protected, approver-only
``<pk>/approve/`` and ``<pk>/reject/`` URLs and the context the shared template
``admin/_approval_forms.html`` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from portal import approvals
from portal.errors import RequestRefused


def safe_next(request, default: str) -> str:
    """Where to go after a POST: the form's ``next`` if it is a path on this portal
    (``/``-rooted, no scheme, no host, no ``//`` or ``\\`` tricks), else ``default``.

    The dashboard's inbox posts to the object pages' endpoints with ``next=/`` so the
    person stays in the inbox; anything else (``https://evil.example/``, ``//evil``,
    ``/\\evil``, ``javascript:``) is ignored rather than followed."""
    target = request.POST.get("next", "")
    if (
        not target
        or len(target) > 2000
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(c in target for c in "\\\r\n\t")
        or not url_has_allowed_host_and_scheme(target, allowed_hosts=None)
    ):
        return default
    return target


class ApprovalAdminMixin:
    """Approve/Reject buttons and views for a request model implementing ``Approvable``."""

    #: staticmethod ``fn(pk, *, by, confirmation, fingerprint, comment) -> Tally``
    sign_request: Callable[..., approvals.Tally]
    #: staticmethod ``fn(pk, *, by, reason)``
    reject_request: Callable[..., Any]
    #: status in which a request waits for signatures
    waiting_status: str
    approved_message = "Approved."
    #: given by the ModelAdmin this is mixed into
    model: type[models.Model]
    admin_site: AdminSite

    def _approval_url_name(self, verb: str) -> str:
        meta = self.model._meta
        return f"{meta.app_label}_{meta.model_name}_{verb}"

    def approval_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/approve/", wrap(require_POST(self._approve)),
                 name=self._approval_url_name("approve")),
            path("<int:pk>/reject/", wrap(require_POST(self._reject)),
                 name=self._approval_url_name("reject")),
        ]  # fmt: skip

    def approval_context(self, request, obj) -> dict:
        user = request.user
        waiting = obj.status == self.waiting_status
        can_sign = False
        if waiting:
            try:
                approvals.check_signer(
                    obj, user, fingerprint=None, confirmation=obj.approval_confirmation_text
                )
                can_sign = True
            except approvals.ApprovalError:
                can_sign = False
        return {
            "tally": approvals.tally(obj),
            "rule": approvals.rule_for(obj.approval_impact),
            "can_sign": can_sign,
            "can_reject": waiting and user.has_perm(approvals.APPROVE_PERMISSION),
            "fingerprint": obj.approval_fingerprint(),
            "confirm_text": obj.approval_confirmation_text,
            "approve_url": reverse(f"admin:{self._approval_url_name('approve')}", args=[obj.pk]),
            "reject_url": reverse(f"admin:{self._approval_url_name('reject')}", args=[obj.pk]),
        }

    def _back(self, request, pk) -> HttpResponseRedirect:
        """The form's own ``next`` (the inbox) when it is safe, else the object's page."""
        meta = self.model._meta
        page = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])
        return HttpResponseRedirect(safe_next(request, page))

    def _approve(self, request, pk):
        if not request.user.has_perm(approvals.APPROVE_PERMISSION):
            raise PermissionDenied
        try:
            tally = self.sign_request(
                pk,
                by=request.user,
                confirmation=request.POST.get("confirmation", ""),
                fingerprint=request.POST.get("fingerprint", ""),
                comment=request.POST.get("comment", ""),
            )
        except RequestRefused as exc:
            messages.error(request, exc.message)
        else:
            if tally.complete:
                messages.success(request, self.approved_message)
            else:
                messages.info(request, f"Signed ({tally.count}/{tally.required}).")
        return self._back(request, pk)

    def _reject(self, request, pk):
        if not request.user.has_perm(approvals.APPROVE_PERMISSION):
            raise PermissionDenied
        try:
            self.reject_request(pk, by=request.user, reason=request.POST.get("reason", ""))
        except RequestRefused as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Rejected.")
        return self._back(request, pk)
