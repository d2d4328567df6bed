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
        fields = ("id", "created", "event_type", "actor", "actor_user_id", "subject_type")
        fields += ("subject_id", "details", "prev_hash", "hash", "key_id")
        # Plain rows, not model instances: an export of the whole log stays fast.
        write = self.stdout.write
        for line in events.values(*fields).iterator(chunk_size=2000):
            line["created"] = line["created"].isoformat()
            write(json.dumps(line, ensure_ascii=False, sort_keys=True))
