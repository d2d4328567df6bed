import json

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

from portal.models import AuditEvent


class Command(BaseCommand):
    help = "Write the audit log as JSON lines (one event per line, oldest first) to stdout."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="Only events at or after this ISO 8601 time.")

    def handle(self, *args, since=None, **options):
        events = AuditEvent.objects.order_by("id")
        if since:
            moment = parse_datetime(since)
            if moment is None:
                raise CommandError(f"--since {since!r} is not an ISO 8601 date-time.")
            if is_naive(moment):
                moment = make_aware(moment)
            events = events.filter(created__gte=moment)
        for event in events.iterator(chunk_size=2000):
            line = {
                "id": event.pk,
                "created": event.created.isoformat(),
                "event_type": event.event_type,
                "actor": event.actor,
                "actor_user_id": event.actor_user_id,
                "subject_type": event.subject_type,
                "subject_id": event.subject_id,
                "details": event.details,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            }
            self.stdout.write(json.dumps(line, ensure_ascii=False, sort_keys=True))
