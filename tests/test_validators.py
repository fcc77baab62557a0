"""Domain name and e-mail validation and normalisation: what is a name or an address we store
and compare."""

import pytest
from django.core.exceptions import ValidationError

from core.validators import (
    clean_email,
    normalize_domain_name,
    normalize_email,
    validate_domain_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "alpha.example.org",
        "a.bc",
        "xn--bcher-kva.example.org",
        # IDNA 2008 keeps the sharp s (IDNA 2003 would map it to "ss" and refuse the label).
        "xn--fa-hia.de",
        "a-b.example.org",
        "1.example.org",
    ],
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
        # Punycode checked both ways: no Unicode label encodes to these.
        "xn--zz.example.org",
        "xn--a.example.org",
        "xn--.example.org",
        "alpha.xn--zz",
        # Decodes, but to code points IDNA does not allow in a label (controls, an emoji).
        "xn--abc.example.org",
        "xn--ls8h.example.org",
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


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("alice@alpha.example.org", "alice@alpha.example.org"),
        ("Alice.B+tag@Alpha.Example.ORG", "Alice.B+tag@alpha.example.org"),
        ("alice@alpha.example.org.", "alice@alpha.example.org"),
        ("  alice@alpha.example.org  ", "alice@alpha.example.org"),
        # IDNA reads these as dots: the same domain.
        ("alice@alpha\uff0eexample\uff0eorg", "alice@alpha.example.org"),
        ("alice@alpha\u3002example\uff61org", "alice@alpha.example.org"),
        ("o'brien@xn--bcher-kva.example.org", "o'brien@xn--bcher-kva.example.org"),
    ],
    ids=repr,
)
def test_an_address_is_cleaned_as_the_one_normaliser_writes_it(raw, clean):
    assert clean_email(raw) == clean
    assert normalize_email(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        "not-an-email",
        "alice@",
        "@alpha.example.org",
        "alice@localhost",
        "alice@alpha.example.org\r\nBcc: x@y.org",
        "alice@alpha.example.org\n",
        "ali\x00ce@alpha.example.org",
        "ali ce@alpha.example.org",
        '"ali ce"@alpha.example.org',
        "alice..b@alpha.example.org",
        ".alice@alpha.example.org",
        "alice@xn--zz.example.org",
        "alice@bücher.example.org",
        "al\u00efce@alpha.example.org",
        "a" * 65 + "@alpha.example.org",
        "alice@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 60 + ".org",
        None,
        ["alice@alpha.example.org"],
    ],
    ids=repr,
)
def test_what_is_not_an_address_is_refused(raw):
    with pytest.raises(ValidationError):
        clean_email(raw)
