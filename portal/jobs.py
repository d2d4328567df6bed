"""Portal-wide RQ jobs (thin: they call the code that does the work)."""

from django.core.management import call_command

from portal import notify


def clear_expired_sessions() -> None:
    call_command("clearsessions")


def send_notification(notification_id: int) -> str:
    """Send one notification; raises on a failed attempt so RQ retries it."""
    return notify.deliver(notification_id)


def resend_stuck_notifications() -> list[int]:
    """Re-enqueue PENDING notifications whose send job vanished."""
    return notify.resend_stuck()
