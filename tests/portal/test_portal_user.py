import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from portal.models import AuditEvent
from portal.roles import role_of

pytestmark = pytest.mark.django_db


def test_it_creates_a_user_with_a_role_from_a_password_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct-horse-battery-9\n")
    call_command("portal_user", "alice", "--role", "operator", "--password-file", str(pw))
    user = get_user_model().objects.get(username="alice")
    assert role_of(user) == "operator"
    assert user.is_staff
    assert authenticate(username="alice", password="correct-horse-battery-9") == user
    event = AuditEvent.objects.get(event_type="USER_CREATED")
    assert event.details["role"] == "operator"
    assert "correct-horse" not in str(event.details)


def test_it_updates_the_role_and_keeps_one_role(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct-horse-battery-9")
    call_command("portal_user", "bob", "--role", "viewer", "--password-file", str(pw))
    call_command("portal_user", "bob", "--role", "approver", "--keep-password")
    user = get_user_model().objects.get(username="bob")
    assert list(user.groups.values_list("name", flat=True)) == ["approver"]
    assert AuditEvent.objects.filter(event_type="USER_UPDATED").count() == 1


def test_it_refuses_a_weak_password_and_changes_nothing(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("123")
    with pytest.raises(CommandError, match="too short"):
        call_command("portal_user", "carol", "--role", "viewer", "--password-file", str(pw))
    assert not get_user_model().objects.filter(username="carol").exists()
    assert not AuditEvent.objects.exists()


def test_it_refuses_an_unknown_role():
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("portal_user", "dave", "--role", "root", "--keep-password")


def test_it_refuses_a_bad_username_and_a_missing_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct-horse-battery-9")
    with pytest.raises(CommandError, match="Invalid user name"):
        call_command("portal_user", "bad name;", "--role", "viewer", "--password-file", str(pw))
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("portal_user", "erin", "--role", "viewer", "--password-file", "/nope/pw")
    assert not get_user_model().objects.exists()
