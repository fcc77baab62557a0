"""Domain name validation and normalisation: what is a name we store and compare."""

import pytest
from django.core.exceptions import ValidationError

from core.validators import normalize_domain_name, validate_domain_name


@pytest.mark.parametrize(
    "name",
    ["alpha.example.org", "a.bc", "xn--bcher-kva.example.org", "a-b.example.org", "1.example.org"],
)
def test_valid_names_are_accepted(name):
    validate_domain_name(name)


@pytest.mark.parametrize(
    "name",
    [
        # `$` also matches before a final newline: a label must end where the name says.
        "alpha\n.example.org",
        "alpha.example\n.org",
        "alpha.example.org\n",
        "alpha\r.example.org",
        "alpha\x00.example.org",
        "Alpha.example.org",
        " alpha.example.org",
        "alpha .example.org",
        "bücher.example.org",
        "alpha\u200b.example.org",
        "localhost",
        # A top-level label of one character: no such domain exists.
        "example.a",
        "alpha.example.org.",
        "a..example.org",
        "-a.example.org",
        "a-.example.org",
        "127.0.0.1",
        "x" * 64 + ".example.org",
        ("a" * 63 + ".") * 4 + "org",
    ],
    ids=repr,
)
def test_invalid_names_are_refused(name):
    with pytest.raises(ValidationError):
        validate_domain_name(name)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Alpha.Example.ORG", "alpha.example.org"),
        # One trailing dot, the fully qualified spelling, is dropped at every door.
        ("Alpha.Example.ORG.", "alpha.example.org"),
        ("alpha.example.org..", "alpha.example.org."),
        # Unicode lowers the Kelvin sign to an ASCII "k": it must stay non-ASCII, so the name is
        # refused instead of silently becoming another domain.
        ("\u212aelvin.example.org", "\u212aelvin.example.org"),
        ("\u0130stanbul.example.org", "\u0130stanbul.example.org"),
    ],
)
def test_normalisation_lowers_ascii_letters_only(raw, normalised):
    assert normalize_domain_name(raw) == normalised


def test_kelvin_sign_is_not_a_k():
    with pytest.raises(ValidationError):
        validate_domain_name(normalize_domain_name("\u212aelvin.example.org"))
