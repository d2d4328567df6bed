"""``portal.lib.transitions.compare_and_swap`` on a real table (PostgreSQL): one caller wins
a move, the loser changes nothing, and a move outside the table is refused."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from portal.lib.transitions import compare_and_swap
from pra.choices import TRANSITIONS, ActionStatus
from pra.models import PRAAction
from tests.factories import offline_host, propose


def _proposed(by) -> PRAAction:
    # Any model with a status table would do; remediation actions are real and at hand.
    return propose(by, offline_host("cas-1"))


@pytest.mark.django_db
def test_it_moves_once_and_stamps_the_change(operator):
    action = _proposed(operator)
    before = action.status_changed_at
    assert compare_and_swap(
        PRAAction, action.pk, ActionStatus.PROPOSED, ActionStatus.REJECTED, TRANSITIONS,
        job_id="job-1",
    )  # fmt: skip
    action.refresh_from_db()
    assert (action.status, action.job_id) == (ActionStatus.REJECTED, "job-1")
    assert action.status_changed_at > before
    # Its state is no longer PROPOSED: a second identical move loses and changes nothing.
    assert not compare_and_swap(
        PRAAction, action.pk, ActionStatus.PROPOSED, ActionStatus.EXPIRED, TRANSITIONS
    )
    action.refresh_from_db()
    assert action.status == ActionStatus.REJECTED


@pytest.mark.django_db
def test_it_refuses_a_move_the_table_does_not_allow(operator):
    action = _proposed(operator)
    with pytest.raises(ValueError, match="illegal transition PROPOSED -> COMPLETED"):
        compare_and_swap(
            PRAAction, action.pk, ActionStatus.PROPOSED, ActionStatus.COMPLETED, TRANSITIONS
        )
    action.refresh_from_db()
    assert action.status == ActionStatus.PROPOSED


@pytest.mark.django_db(transaction=True)
def test_of_two_racing_callers_exactly_one_wins(operator):
    action = _proposed(operator)
    barrier = threading.Barrier(2)
    wins: list[bool] = []

    def move(new: str) -> None:
        try:
            barrier.wait(10)
            wins.append(
                compare_and_swap(PRAAction, action.pk, ActionStatus.PROPOSED, new, TRANSITIONS)
            )
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=move, args=(new,))
        for new in (ActionStatus.REJECTED, ActionStatus.EXPIRED)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(wins) == [False, True]
    assert PRAAction.objects.get(pk=action.pk).status in {
        ActionStatus.REJECTED, ActionStatus.EXPIRED
    }  # fmt: skip
