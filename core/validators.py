"""Validation and normalisation of what people and upstreams send: domain names, e-mails.

One domain-name normaliser serves every door (provisioning, domain creation, upstream
answers, the model, the command line).
"""

import re
import string
import unicodedata

import idna
from django.core.exceptions import ValidationError

# One DNS label: letters, digits and inner hyphens, 1 to 63 characters (IDNs in punycode).
# Matched with fullmatch: `$` would also accept a label followed by a newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# str.lower() maps some non-ASCII letters to ASCII ones (the Kelvin sign "K" becomes "k"):
# only ASCII letters are lowered, so such a name stays non-ASCII and is refused.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# The characters IDNA reads as a label separator (RFC 3490, 3.1): `alpha\uff0eexample\uff0eorg` is
# domain `alpha.example.org`, so an address written with them is the same address.
IDNA_DOTS = "\u3002\uff0e\uff61"
_IDNA_DOTS = str.maketrans(dict.fromkeys(IDNA_DOTS, "."))
# An RFC 5322 dot-atom: the local part of every address a provider verifies.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


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
    if any(label.startswith("xn--") and not _is_punycode(label) for label in labels):
        raise ValidationError("Enter a valid domain name.", code="invalid_domain")


def _is_punycode(label: str) -> bool:
    """Whether an `xn--` label is an IDNA 2008 A-label: it decodes to a valid Unicode label
    that encodes back to the same text (`xn--zz` is the encoding of nothing)."""
    try:
        return idna.encode(idna.decode(label)).decode("ascii") == label
    except idna.IDNAError:
        return False


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
    """Keep the local part as is (RFC 5321) and normalise the domain part as every domain name
    is; the dots IDNA reads as label separators (e.g. the fullwidth U+FF0E) become ASCII dots."""
    email = (email or "").strip()
    local, at, domain = email.rpartition("@")
    return f"{local}@{normalize_domain_name(domain.translate(_IDNA_DOTS))}" if at else email


def clean_email(value) -> str:
    """Normalise an e-mail address and check it; ValidationError when it is not one.

    An address is a dot-atom local part (no quoted strings, no control character) and a valid
    domain name (IDNs in punycode), at most 254 characters: the one shape every door stores.
    """
    if not isinstance(value, str) or has_control_characters(value):
        raise ValidationError("Enter a valid e-mail address.", code="invalid_email")
    email = normalize_email(value)
    local, at, domain = email.rpartition("@")
    if not at or len(email) > 254 or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise ValidationError("Enter a valid e-mail address.", code="invalid_email")
    try:
        validate_domain_name(domain)
    except ValidationError:
        raise ValidationError("Enter a valid e-mail address.", code="invalid_email") from None
    return email


def has_control_characters(value: str) -> bool:
    """Whether a text holds a control character (NUL, CR, LF, tab, escape...)."""
    return any(unicodedata.category(character) == "Cc" for character in value)
