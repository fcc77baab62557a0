"""core/services/errors.py: a service's refusal carries a message for the caller and its field."""

import pytest

from core.services import AlreadyExistsError, InvalidDomainNameError, ServiceError


def test_a_refusal_without_a_field_is_about_the_whole_request():
    error = ServiceError("Not now.")

    assert (str(error), error.message, error.field) == ("Not now.", "Not now.", "non_field_errors")


@pytest.mark.parametrize("kind", [InvalidDomainNameError, AlreadyExistsError])
def test_each_refusal_is_a_service_error_naming_its_field(kind):
    error = kind("Enter a valid domain name.", field="name")

    assert isinstance(error, ServiceError)
    assert (error.message, error.field) == ("Enter a valid domain name.", "name")
