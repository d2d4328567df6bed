"""Warnings a page shows when nobody was told: ``{% notification_warning incident %}``.

``portal.notify`` only logs (INFO) when no channel matches: on a laptop or a fresh
install an escalating incident would then reach nobody while looking handled. The
incident page says so instead (one query).
"""

from __future__ import annotations

from django import template
from django.urls import reverse
from django.utils.html import format_html

from portal.choices import NotificationStatus
from portal.models import Notification

register = template.Library()


@register.simple_tag(takes_context=True)
def notification_warning(context, subject) -> str:
    if subject is None or getattr(subject, "pk", None) is None:
        return ""
    statuses = list(
        Notification.objects.filter(
            subject_type=subject._meta.label_lower, subject_id=str(subject.pk)
        ).values_list("status", flat=True)
    )
    user = context.get("user") or getattr(context.get("request"), "user", None)
    can_fix = bool(user and user.has_perm("portal.manage_portal"))
    level = getattr(subject, "escalation_level", None)
    where = f" (escalation L{level})" if level else ""
    if not statuses:
        fix = (
            format_html(
                ' Add one under <a href="{}">notification channels</a> or attach one to an '
                '<a href="{}">escalation level</a>.',
                reverse("admin:portal_notificationchannel_changelist"),
                reverse("admin:portal_escalationlevel_changelist"),
            )
            if can_fix
            else " An administrator can add notification channels."
        )
        return format_html(
            '<p class="portal-warning" id="no-notification-warning" role="alert">'
            "<strong>Nobody was notified{}:</strong> no notification channel matches this "
            "incident, so its opening and escalations were only logged.{}</p>",
            where,
            fix,
        )
    failed = statuses.count(NotificationStatus.FAILED)
    if failed == len(statuses):
        return format_html(
            '<p class="portal-warning" id="notification-failed-warning" role="alert">'
            "<strong>Every notification failed</strong> ({} of {}): nobody was reached. "
            '<a href="{}?q={}">See the notifications</a>.</p>',
            failed,
            len(statuses),
            reverse("admin:portal_notification_changelist"),
            subject.pk,
        )
    return ""
