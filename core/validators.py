"""Validation and normalisation of what people and upstreams send: domain names, e-mails.

One domain-name normaliser serves every door (provisioning, domain creation, upstream
answers, the model, the command line).
"""

import re
import string

from django.core.exceptions import ValidationError

# One DNS label: letters, digits and inner hyphens, 1 to 63 characters (IDNs in punycode).
# Matched with fullmatch: `$` would also accept a label followed by a newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# str.lower() maps some non-ASCII letters to ASCII ones (the Kelvin sign "K" becomes "k"):
# only ASCII letters are lowered, so such a name stays non-ASCII and is refused.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def validate_domain_name(value: str) -> None:
    """Accept a lower-case fully qualified domain name: at least two labels, the last one (the
    top-level domain) of at least two characters and not all digits."""
    if not isinstance(value, str) or value != value.strip().lower():
        raise ValidationError("Enter a lower-case domain name.", code="invalid_domain")
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2:
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")
    if len(labels[-1]) < 2 or labels[-1].isdigit():
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")


def ascii_lower(value: str) -> str:
    """Lower-case the ASCII letters of a name and leave every other character as it is."""
    return value.translate(_ASCII_LOWER)


def normalize_domain_name(value: str) -> str:
    """Return a name as it is stored and compared: ASCII letters lowered, one trailing dot
    dropped (the fully qualified spelling), nothing else touched.

    Doors that take typed input (the API, the command line) trim surrounding whitespace
    first; an upstream answer must carry none.
    """
    return ascii_lower(value).removesuffix(".")


def clean_domain_name(value) -> str:
    """Normalise a name and check it; ValidationError when it is not a valid domain name."""
    if not isinstance(value, str):
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")
    name = normalize_domain_name(value)
    validate_domain_name(name)
    return name


def normalize_email(email: str) -> str:
    """Lower-case the domain part of an email and keep the local part as is (RFC 5321)."""
    email = (email or "").strip()
    local, at, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}" if at else email
