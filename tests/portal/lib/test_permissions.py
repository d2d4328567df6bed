"""portal.lib.permissions: one refusal, in the caller's error class."""

import pytest

from portal.errors import RequestRefused
from portal.lib.permissions import require_perm


@pytest.mark.django_db
def test_require_perm_refuses_with_the_callers_error_class(operator, admin_user):
    class Refused(RequestRefused):
        pass

    require_perm(None, "portal.manage_portal", "manage")  # a system caller
    require_perm(admin_user, "portal.manage_portal", "manage", Refused)
    with pytest.raises(Refused) as refused:
        require_perm(operator, "portal.manage_portal", "manage the portal", Refused)
    assert refused.value.code == "permission"
    assert refused.value.message == "You are not allowed to manage the portal."
