from django.core.management.base import BaseCommand, CommandError

from portal.audit import verify_chain
from portal.models import AuditEvent


class Command(BaseCommand):
    help = "Recompute the audit hash chain; exit non-zero naming the first bad row."

    def handle(self, *args, **options):
        problem = next(verify_chain(), None)
        if problem is not None:
            raise CommandError(f"audit chain broken at event #{problem.event_id}: {problem.reason}")
        count = AuditEvent.objects.count()
        self.stdout.write(self.style.SUCCESS(f"audit chain intact ({count} events)."))
