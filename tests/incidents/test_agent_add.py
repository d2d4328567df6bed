"""manage.py agent_add: the secret is printed once; bad input is a clear error, no row."""

import io

import pytest
from django.core.management import CommandError, call_command

from incidents.models import Agent
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_it_registers_an_agent_and_prints_its_secret_once():
    out = io.StringIO()
    call_command("agent_add", "shop-1", "--owner", "shop team", stdout=out, stderr=io.StringIO())
    agent = Agent.objects.get(name="shop-1")
    assert len(out.getvalue().strip()) >= 40 and out.getvalue().strip() not in agent.secret_sealed
    assert AuditEvent.objects.filter(event_type="AGENT_CREATED").count() == 1


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["shop\x00-1"], "name"),
        (["shop-1", "--owner", "team\x00"], "--owner"),
        (["shop-1", "--env", "prod\udcff"], "--env"),  # undecodable argv byte
        (["shop-1", "--host", "dns\x00"], "--host"),
        (["shop-1", "--rotate", "--available-version", "1\x00"], "--available-version"),
    ],
)
def test_text_the_database_cannot_store_is_refused_by_name(argv, named):
    with pytest.raises(CommandError, match=f"^{named}: contains a character that cannot be"):
        call_command("agent_add", *argv, stdout=io.StringIO(), stderr=io.StringIO())
    assert not Agent.objects.exists()
    assert not AuditEvent.objects.exists()


def test_create_agent_refuses_unstorable_fields_too():
    from incidents import actions

    with pytest.raises(actions.IncidentError, match="owner: contains a character"):
        actions.create_agent(name="shop-1", owner="a\x00b")
    assert not Agent.objects.exists()
