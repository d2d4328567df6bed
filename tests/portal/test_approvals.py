"""``portal.approvals``: who may sign a request, how signatures are counted, and the rules
per impact (HIGH never weaker than two people and a typed confirmation)."""

from __future__ import annotations

import pytest

from portal import approvals
from portal.approvals import ApprovalError, check_signer, fingerprint_of, rule_for, sign, tally
from portal.choices import Impact
from portal.models import ApiToken, ApprovalRule, AuditEvent

pytestmark = pytest.mark.django_db


class Request:
    """Something to sign: a stored portal row (an API token; any row would do) with the
    approval interface (``approvals.Approvable``) that remediations and restores have."""

    def __init__(self, row, *, impact: str, requester=None, target: str = "db-prod") -> None:
        self.row, self.pk, self._meta = row, row.pk, row._meta
        self.approval_impact = impact
        self.approval_requester_id = requester.pk if requester is not None else None
        self.approval_confirmation_text = target
        self.content = "restart unbound on dns-1"

    def approval_fingerprint(self) -> str:
        return fingerprint_of(what=self.content)


@pytest.fixture
def request_of(operator):
    def make(impact: str = Impact.MEDIUM, requester=operator, **kwargs) -> Request:
        row = ApiToken.objects.create(user=operator, name="x", prefix="opp_x", digest=impact)
        return Request(row, impact=impact, requester=requester, **kwargs)

    return make


def test_signatures_count_distinct_approvers_of_the_request_as_it_is(
    request_of, approver, approver2
):
    obj = request_of(Impact.HIGH)
    first = sign(obj, approver, fingerprint=obj.approval_fingerprint(), confirmation="db-prod")
    assert (first.approvers, first.required, first.complete) == ([approver.username], 2, False)
    second = sign(obj, approver2, fingerprint=None, confirmation="db-prod")
    assert second.complete and second.count == 2
    assert AuditEvent.objects.filter(event_type="APPROVAL_SIGNED").count() == 2
    # The request changes: the signatures were for what it was, they no longer count.
    obj.content = "restart unbound on dns-2"
    assert tally(obj).count == 0


@pytest.mark.parametrize(
    ("who", "code"),
    [("viewer", "permission"), ("operator", "permission"), ("approver", "self_approval")],
)
def test_only_an_approver_who_did_not_ask_may_sign(request, request_of, approver, who, code):
    obj = request_of(requester=approver)
    person = request.getfixturevalue(who)
    with pytest.raises(ApprovalError) as refused:
        sign(obj, person, fingerprint=None)
    assert refused.value.code == code
    assert tally(obj).count == 0
    assert not AuditEvent.objects.filter(event_type="APPROVAL_SIGNED").exists()


def test_a_signature_on_what_changed_since_it_was_shown_is_refused(request_of, approver):
    obj = request_of()
    shown = obj.approval_fingerprint()
    obj.content = "something else"
    with pytest.raises(ApprovalError) as refused:
        check_signer(obj, approver, fingerprint=shown, confirmation="")
    assert refused.value.code == "stale"


def test_high_impact_needs_the_target_typed_exactly(request_of, approver):
    obj = request_of(Impact.HIGH, target="db-prod")
    for typed in ("", "db-pro", "DB-PROD"):
        with pytest.raises(ApprovalError, match=r"Type the target's name \(db-prod\)"):
            sign(obj, approver, fingerprint=None, confirmation=typed)
    assert sign(obj, approver, fingerprint=None, confirmation=" db-prod ").count == 1


def test_one_person_signs_once(request_of, approver):
    obj = request_of()
    sign(obj, approver, fingerprint=None)
    with pytest.raises(ApprovalError) as refused:
        sign(obj, approver, fingerprint=None)
    assert refused.value.code == "already_signed"
    assert tally(obj).count == 1


def test_high_is_never_weaker_than_two_people_and_a_confirmation(admin_user):
    ApprovalRule.objects.update_or_create(
        impact=Impact.HIGH,
        defaults={"required_approvals": 1, "require_confirmation": False,
                  "allow_auto_approve": True},
    )  # fmt: skip
    rule = rule_for(Impact.HIGH)
    assert (rule.required_approvals, rule.require_confirmation, rule.allow_auto_approve) == (
        2, True, False
    )  # fmt: skip
    assert not approvals.may_auto_approve(Impact.HIGH)


def test_only_low_impact_may_be_approved_automatically_and_only_if_its_rule_allows():
    ApprovalRule.objects.filter(impact=Impact.MEDIUM).update(allow_auto_approve=True)
    assert not approvals.may_auto_approve(Impact.MEDIUM)
    ApprovalRule.objects.filter(impact=Impact.LOW).update(allow_auto_approve=True)
    assert approvals.may_auto_approve(Impact.LOW)
    ApprovalRule.objects.filter(impact=Impact.LOW).update(allow_auto_approve=False)
    assert not approvals.may_auto_approve(Impact.LOW)


def test_a_missing_rule_falls_back_to_the_defaults():
    ApprovalRule.objects.filter(impact=Impact.MEDIUM).delete()
    rule = rule_for(Impact.MEDIUM)
    assert rule.pk is None
    assert rule.required_approvals == approvals.DEFAULT_RULES[Impact.MEDIUM]["required_approvals"]
