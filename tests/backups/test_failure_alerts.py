"""Failure alerts say why (classified cause) and what the tool said (its last stderr lines,
secrets scrubbed); a backup that cannot fit fails before it starts, naming the path
(issue 13 §5)."""

from __future__ import annotations

import pytest

from backups import actions, jobs
from backups.choices import RunStatus, SourceKind
from backups.faults import FailureCause
from backups.models import BackupRun
from backups.scrub import scrub
from backups.sources import Component, ToolCommand
from portal.models import Notification, NotificationChannel
from tests.backups.helpers import backup_now, make_source, pg_source

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def channel(db):
    return NotificationChannel.objects.create(
        name="ops-hook", kind="WEBHOOK", url="http://127.0.0.1:9/hook", kinds=["BACKUP_FAILED"]
    )


@pytest.mark.parametrize(
    ("said", "kept", "gone"),
    [
        ("could not connect to postgres://app:s3cr3t-pw@db:5432/shop", "postgres://app:***@db",
         "s3cr3t-pw"),
        ("host=db user=app password=hunter22 dbname=x", "password=***", "hunter22"),
        ("PGPASSWORD=topsecret pg_dump -d shop", "PGPASSWORD=***", "topsecret"),
        ('{"token": "abc123def", "user": "x"}', '"user": "x"', "abc123def"),
        ("Authorization: Bearer eyJabcdefgh.ijklmnopq.rstuvwxyz", "Bearer ***", "eyJabcdefgh"),
        ("AUTH default hunter2", "AUTH ***", "hunter2"),
        ("AUTH failed: WRONGPASS invalid username-password pair", "AUTH failed: WRONGPASS", ""),
        ('FATAL:  password authentication failed for user "app"', "password authentication", ""),
    ],
)  # fmt: skip
def test_scrub_masks_credentials_and_keeps_the_message(said, kept, gone):
    cleaned = scrub(said)
    assert kept in cleaned
    if gone:
        assert gone not in cleaned


def test_scrub_removes_the_known_password_verbatim():
    assert scrub("the server said: wrong value 'Zq9-unusual'", ["Zq9-unusual"]) == (
        "the server said: wrong value '***'"
    )


def test_a_failed_backup_alert_names_the_cause_and_the_tools_last_lines(
    pg_cluster, operator, capture
):
    source = pg_source("shop-db", pg_cluster.dsn, "no_such_database")
    run = backup_now(source, operator, capture)
    assert run.status == RunStatus.FAILED and run.failure_cause == FailureCause.TOOL_ERROR
    note = Notification.objects.get(kind="BACKUP_FAILED")
    assert note.title == f"backup of shop-db FAILED (run #{run.pk}): Tool failed"
    assert "cause tool_error (Tool failed)" in note.body
    lines = note.body.split("Last lines the tool wrote to stderr:\n", 1)[1].splitlines()
    assert any('database "no_such_database" does not exist' in line for line in lines)


class _ChattyTransport:
    """A stand-in for a tool that prints credentials in its error (real tools rarely do, but a
    DSN or token in a message must never reach the run, the admin or a notification). The
    process is real (``sh``); only what it prints is made up."""

    def __init__(self, source, password: str) -> None:
        self.source = source
        self.password = password

    def components(self) -> list[Component]:
        return [Component("shop", "pg_custom", "shop.pgdump.zst")]

    def command(self, component: Component) -> ToolCommand:
        script = (
            "echo 'pg_dump: connecting to postgres://app:dsn-secret-1@db:5432/shop' >&2; "
            f"echo 'pg_dump: server says: password {self.password} rejected' >&2; "
            "echo 'pg_dump: token=tok-secret-2 expired' >&2; exit 2"
        )
        return ToolCommand(["sh", "-c", script], label="pg_dump")


def test_secrets_in_a_tools_stderr_never_reach_the_run_or_the_alert(pg_cluster, operator):
    source = pg_source("shop-db", pg_cluster.dsn, "shop")
    run = actions.request_run(source, by=operator, enqueue=False)
    claimed = actions.claim_run(run.pk, job_id="test")
    jobs.perform(claimed, lambda: _ChattyTransport(source, "pw-Secret-3"))
    run.refresh_from_db()
    note = Notification.objects.get(kind="BACKUP_FAILED")
    for text in (run.stderr, run.error, note.body):
        for secret in ("dsn-secret-1", "pw-Secret-3", "tok-secret-2"):
            assert secret not in text
    assert "postgres://app:***@db" in note.body and "token=***" in note.body
    assert "password *** rejected" in run.stderr


def test_a_backup_that_cannot_fit_fails_before_starting_naming_the_path(
    kube_api, tmp_path, operator, capture, settings
):
    source = make_source(
        "k8s", SourceKind.KUBERNETES, kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "kc"))
    )
    first = backup_now(source, operator, capture)
    assert first.status == RunStatus.SUCCEEDED
    BackupRun.objects.filter(pk=first.pk).update(bytes_stored=10**18)  # "last time: 1 EB"
    requests_before = len(kube_api.requests)

    second = backup_now(source, operator, capture)

    assert second.status == RunStatus.FAILED and second.failure_cause == FailureCause.NO_SPACE
    assert f"not enough free space in {settings.BACKUP_STORAGE_DIR}" in second.error
    assert f"backup #{first.pk} stored" in second.error and "nothing was started" in second.error
    assert len(kube_api.requests) == requests_before  # kubectl never ran
    assert not list(settings.BACKUP_STORAGE_DIR.glob("*/.incomplete/*"))
    note = Notification.objects.get(kind="BACKUP_FAILED")
    assert "Not enough free space" in note.title and str(settings.BACKUP_STORAGE_DIR) in note.body

    settings.BACKUP_SPACE_MARGIN_PERCENT = 0  # the check is off
    assert backup_now(source, operator, capture).status == RunStatus.SUCCEEDED
