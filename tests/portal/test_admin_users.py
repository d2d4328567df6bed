"""People and roles in the admin (``portal.admin_users``): every change is one audit event.

Through the real admin pages (Django's test client, PostgreSQL): adding a user, changing
a role, deactivating, passwords (set by an administrator, or one's own), the refusals
(mismatched or weak passwords, the last administrator, another role), and the role
groups, which nobody edits in the admin.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from django.db import connection

from portal import actions
from portal.errors import RequestRefused
from portal.models import AuditEvent
from portal.roles import role_of
from tests.conftest import TEST_PASSWORD, make_user

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-long-new-passphrase-42"


def events(kind: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=kind).order_by("id"))


def add_form(**fields):
    return {"username": "carol", "email": "carol@example.com", "role": "operator",
            "password": NEW_PASSWORD, "password_again": NEW_PASSWORD} | fields  # fmt: skip


def change_form(user: User, **fields):
    return {"email": user.email, "role": role_of(user), "is_active": "on" if user.is_active
            else "", "password": "", "password_again": ""} | fields  # fmt: skip


def test_an_admin_adds_a_user_with_one_role_and_one_event(client, admin_user):
    client.force_login(admin_user)
    before = len(events("USER_CREATED"))
    response = client.post("/admin/auth/user/add/", add_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    carol = User.objects.get(username="carol")
    assert role_of(carol) == "operator" and carol.is_staff and carol.check_password(NEW_PASSWORD)
    created = events("USER_CREATED")[before:]
    assert len(created) == 1
    assert created[0].actor == admin_user.username
    assert created[0].details == {"username": "carol", "role": "operator",
                                  "password_changed": True}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"password_again": "something-else-entirely"}, "The two passwords differ"),
        ({"password": "", "password_again": ""}, "A new user needs a password"),
        ({"password": "123", "password_again": "123"}, "too short"),
        ({"username": "<the admin>"}, "already exists"),
        ({"username": "bad name!"}, "Enter a valid username"),
    ],
)
def test_a_refused_user_is_not_added(client, admin_user, fields, says):
    client.force_login(admin_user)
    if fields.get("username") == "<the admin>":
        fields = {"username": admin_user.username}
    users, trail = User.objects.count(), AuditEvent.objects.count()
    response = client.post("/admin/auth/user/add/", add_form(**fields), follow=True)
    assert response.status_code == 200
    assert says in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert (User.objects.count(), AuditEvent.objects.count()) == (users, trail)


def test_changing_a_role_is_one_event_and_an_unchanged_save_none(client, admin_user, operator):
    client.force_login(admin_user)
    url = f"/admin/auth/user/{operator.pk}/change/"
    assert client.post(url, change_form(operator, role="approver")).status_code == 302
    operator.refresh_from_db()
    assert role_of(operator) == "approver"
    assert list(operator.groups.values_list("name", flat=True)) == ["approver"]
    (event,) = events("USER_UPDATED")[-1:]
    assert event.details == {"username": operator.username,
                             "role": {"from": "operator", "to": "approver"}}  # fmt: skip
    count = AuditEvent.objects.count()
    assert client.post(url, change_form(operator)).status_code == 302
    assert AuditEvent.objects.count() == count


def test_an_admin_sets_a_password_and_deactivates(client, admin_user, operator):
    client.force_login(admin_user)
    url = f"/admin/auth/user/{operator.pk}/change/"
    form = change_form(operator, password=NEW_PASSWORD, password_again=NEW_PASSWORD,
                       is_active="")  # fmt: skip
    assert client.post(url, form).status_code == 302
    operator.refresh_from_db()
    assert operator.check_password(NEW_PASSWORD) and not operator.is_active
    (event,) = events("USER_UPDATED")[-1:]
    assert event.details == {"username": operator.username, "is_active": False,
                             "password_changed": True}  # fmt: skip
    assert NEW_PASSWORD not in str(event.details)
    client.logout()
    assert not client.login(username=operator.username, password=NEW_PASSWORD)


def test_the_last_active_admin_cannot_be_deactivated_or_demoted(client, admin_user):
    client.force_login(admin_user)
    url = f"/admin/auth/user/{admin_user.pk}/change/"
    trail = AuditEvent.objects.count()
    for form in (change_form(admin_user, is_active=""), change_form(admin_user, role="viewer")):
        response = client.post(url, form, follow=True)
        assert "without an active administrator" in response.content.decode()
        admin_user.refresh_from_db()
        assert admin_user.is_active and role_of(admin_user) == "admin"
    assert AuditEvent.objects.count() == trail


def test_another_admin_may_be_demoted(admin_user):
    second = User.objects.create_user("second-admin", password=TEST_PASSWORD)
    actions.update_user(second, by=admin_user, role="admin")
    actions.update_user(admin_user.pk, by=second, role="viewer")
    assert role_of(admin_user) == "viewer"


def test_update_user_refuses_what_it_does_not_take(admin_user, operator):
    with pytest.raises(RequestRefused, match="not a user field: is_superuser"):
        actions.update_user(operator, by=admin_user, is_superuser=True)
    with pytest.raises(RequestRefused, match="unknown role"):
        actions.update_user(operator, by=admin_user, role="root")
    with pytest.raises(RequestRefused, match="not an e-mail address"):
        actions.update_user(operator, by=admin_user, email="not-an-address")
    operator.refresh_from_db()
    assert role_of(operator) == "operator" and not operator.is_superuser


def test_other_roles_may_not_manage_users(client, operator, approver):
    for user in (operator, approver):
        client.force_login(user)
        assert client.get("/admin/auth/user/").status_code == 403
        assert client.post("/admin/auth/user/add/", add_form()).status_code == 403
        url = f"/admin/auth/user/{user.pk}/change/"
        assert client.post(url, change_form(user, role="admin")).status_code == 403
        with pytest.raises(RequestRefused):
            actions.update_user(user, by=user, role="admin")
        assert role_of(user) != "admin"
    assert not User.objects.filter(username="carol").exists()


def test_users_are_never_deleted_and_role_groups_never_edited(client, admin_user, operator):
    client.force_login(admin_user)
    assert (
        client.post(f"/admin/auth/user/{operator.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    group = Group.objects.get(name="admin")
    assert client.get(f"/admin/auth/group/{group.pk}/change/").status_code == 200  # a view
    for url in (f"/admin/auth/group/{group.pk}/change/", f"/admin/auth/group/{group.pk}/delete/",
                "/admin/auth/group/add/"):  # fmt: skip
        assert client.post(url, {"name": "root", "post": "yes"}).status_code == 403
    assert Group.objects.filter(name="admin").exists()
    assert User.objects.filter(pk=operator.pk).exists()


def test_ones_own_password_change_is_audited(client, operator):
    client.force_login(operator)
    response = client.post(
        "/admin/password_change/",
        {
            "old_password": TEST_PASSWORD,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },  # fmt: skip
    )
    assert response.status_code == 302 and response["Location"] == "/admin/password_change/done/"
    operator.refresh_from_db()
    assert operator.check_password(NEW_PASSWORD)
    (event,) = events("USER_UPDATED")
    assert event.details == {"username": operator.username, "password_changed": True, "own": True}
    assert event.actor == operator.username
    wrong = client.post(
        "/admin/password_change/",
        {
            "old_password": "not-it",
            "new_password1": "x-" + NEW_PASSWORD,
            "new_password2": "x-" + NEW_PASSWORD,
        },  # fmt: skip
    )
    assert wrong.status_code == 200 and len(events("USER_UPDATED")) == 1


@pytest.mark.django_db(transaction=True)
def test_two_admins_demoting_each_other_at_once_leave_one(admin_user, monkeypatch):
    """Both changes read "another admin is left" unless they are serialized: a barrier
    right after each reads the old role lets two unserialized calls both pass (the bug);
    the role lock makes the second wait, then refuse."""
    other = make_user("second-admin", "admin")
    barrier = threading.Barrier(2)
    real_role_of = actions.role_of

    def role_of_then_meet(user):
        found = real_role_of(user)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        return found

    monkeypatch.setattr(actions, "role_of", role_of_then_meet)
    outcomes: list[str] = []

    def demote(who: User, by: User) -> None:
        try:
            actions.update_user(who.pk, by=by, role="viewer")
            outcomes.append("demoted")
        except RequestRefused as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=demote, args=(admin_user, other)),
               threading.Thread(target=demote, args=(other, admin_user))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["demoted", "last_admin"]
    assert User.objects.filter(is_active=True, groups__name="admin").count() == 1


def test_a_role_ends_superuser_status_and_direct_permissions(client, admin_user):
    boss = User.objects.create_superuser("boss", password=TEST_PASSWORD)
    boss.user_permissions.add(Permission.objects.get(codename="manage_portal"))
    client.force_login(admin_user)
    page = client.get("/admin/auth/user/").content.decode()
    assert "none + superuser" in page
    actions.update_user(boss, by=admin_user, role="viewer")
    boss = User.objects.get(pk=boss.pk)
    assert not boss.is_superuser and not boss.user_permissions.exists()
    assert not boss.has_perm("portal.manage_portal")


def test_portal_user_may_not_demote_the_last_admin_and_says_a_reactivation(admin_user):
    with pytest.raises(CommandError, match="without an active administrator"):
        call_command("portal_user", admin_user.username, "--role", "viewer", "--keep-password")
    assert role_of(admin_user) == "admin"
    gone = make_user("gone", "operator")
    User.objects.filter(pk=gone.pk).update(is_active=False)
    call_command("portal_user", "gone", "--role", "approver", "--keep-password")
    (event,) = events("USER_UPDATED")[-1:]
    assert event.details["previous_role"] == "operator" and event.details["reactivated"]


def test_an_admin_changing_their_own_password_stays_signed_in(client, admin_user):
    client.force_login(admin_user)
    url = f"/admin/auth/user/{admin_user.pk}/change/"
    form = change_form(admin_user, password=NEW_PASSWORD, password_again=NEW_PASSWORD)
    assert client.post(url, form).status_code == 302
    assert client.get("/admin/").status_code == 200
    admin_user.refresh_from_db()
    assert admin_user.check_password(NEW_PASSWORD)
