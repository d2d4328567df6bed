"""Fixtures of the incidents tests: agents with their secrets, a clean rule cache."""

import pytest

from incidents import actions
from incidents.rules import forget_cached_rules


@pytest.fixture(autouse=True)
def _fresh_rules():
    forget_cached_rules()
    yield
    forget_cached_rules()


@pytest.fixture
def agent_and_secret(db):
    return actions.create_agent(
        name="shop-plugin", kind="plugin", environment="production", available_version="1.1.0"
    )
