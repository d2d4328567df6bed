"""Fixtures of the incidents tests: agents with their secrets, a clean rule cache."""

import pytest

from incidents import actions, storms
from incidents.rules import forget_cached_rules


@pytest.fixture(autouse=True)
def _fresh_rules():
    forget_cached_rules()
    storms.forget_cached_rules()
    yield
    forget_cached_rules()
    storms.forget_cached_rules()


@pytest.fixture
def no_storms(db):
    """Grouping rules off: every incident pages on its own (the path before storms)."""
    from incidents.models import GroupingRule

    GroupingRule.objects.update(enabled=False)
    storms.forget_cached_rules()


@pytest.fixture
def agent_and_secret(db):
    return actions.create_agent(
        name="shop-plugin", kind="plugin", environment="production", available_version="1.1.0"
    )
