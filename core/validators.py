"""Validation of mail domain names."""

import re

from django.core.exceptions import ValidationError

# One DNS label: letters, digits and inner hyphens, 1 to 63 characters (IDNs in punycode).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def validate_domain_name(value: str) -> None:
    """Accept a lower-case fully qualified domain name of at least two labels."""
    if not isinstance(value, str) or value != value.strip().lower():
        raise ValidationError("Enter a lower-case domain name.", code="invalid_domain")
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2:
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")


def normalize_domain_name(value: str) -> str:
    """Return a domain name as stored: surrounding whitespace removed, lower-case."""
    return value.strip().lower()
