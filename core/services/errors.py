"""Refusals of the domain's services, with messages written for the caller."""


class ServiceError(Exception):
    """A request the domain refuses; its message is safe to show to the caller as is."""

    def __init__(self, message: str, *, field: str = "non_field_errors"):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidDomainNameError(ServiceError):
    """The name is not a fully qualified domain name (IDNs must be in punycode)."""


class AlreadyExistsError(ServiceError):
    """The object would duplicate one that exists."""
