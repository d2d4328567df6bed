"""portal.lib.validation: model validation errors as one readable line."""

from portal.lib.validation import describe


def test_validation_errors_read_as_one_line():
    from django.core.exceptions import ValidationError

    assert describe(ValidationError({"port": ["Too big."], "__all__": ["Bad pair."]})) == (
        "port: Too big.; Bad pair."
    )
    assert describe(ValidationError("Just this.")) == "Just this."
