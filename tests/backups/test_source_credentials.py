"""A backup source's credential files, like a restore target's, live under
BACKUP_SECRETS_DIR: any other path is refused when the source is saved and when a
backup would read it (a source saved before the rule existed)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from backups.choices import SourceKind
from backups.models import BackupSource
from backups.sources import SourceError, read_password
from tests.backups.helpers import make_source

pytestmark = pytest.mark.django_db


def test_a_password_file_outside_the_secrets_dir_is_refused_on_save(tmp_path, settings):
    settings.BACKUP_SECRETS_DIR = tmp_path / "secrets"
    settings.BACKUP_SECRETS_DIR.mkdir()
    with pytest.raises(ValidationError, match="password_file"):
        make_source("db", SourceKind.POSTGRES, dsn="postgres://u@127.0.0.1/x",
                    databases="x", password_file="/etc/shadow")  # fmt: skip
    assert not BackupSource.objects.exists()


def test_reading_refuses_a_path_outside_and_accepts_one_inside(tmp_path, settings):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    settings.BACKUP_SECRETS_DIR = secrets
    (secrets / "pg").write_text("s3cret\n")
    (tmp_path / "outside").write_text("nope\n")
    assert read_password("", "pg") == "s3cret"
    with pytest.raises(SourceError, match="BACKUP_SECRETS_DIR"):
        read_password("", str(tmp_path / "outside"))
    (secrets / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(SourceError, match="BACKUP_SECRETS_DIR"):
        read_password("", "escape")
