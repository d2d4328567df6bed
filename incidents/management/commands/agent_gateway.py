from django.core.management.base import BaseCommand, CommandError

from incidents import gateway


class Command(BaseCommand):
    help = (
        "Serve the agents' endpoints (/api/agents/...) with the lean heartbeat path: a small "
        "HTTP/1.1 server in front of the portal's ASGI application. Put it behind the TLS "
        "proxy for /api/agents/; SIGTERM stops it after the answers in flight."
    )
    requires_system_checks: list = []  # no database connection before the workers fork

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--workers", type=int, default=1, help="processes on the one port")
        parser.add_argument(
            "--app", default=None, help="module:attribute of another ASGI app (benchmarks)"
        )

    def handle(self, *args, host, port, workers, app, **options):
        if not 1 <= workers <= 64:
            raise CommandError("--workers must be between 1 and 64")
        if not 0 < port < 65536:
            raise CommandError("--port must be a TCP port")
        gateway.run(host, port, workers, app)
