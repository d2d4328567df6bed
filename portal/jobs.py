"""Portal-wide periodic jobs (thin: they call the code that does the work)."""

from django.core.management import call_command


def clear_expired_sessions() -> None:
    call_command("clearsessions")
