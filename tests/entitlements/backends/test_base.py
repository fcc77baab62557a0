"""core/entitlements/backends/base.py: the classified answer every backend returns, and the one
normalisation of the domain names it carries."""

import pytest

from core.entitlements.backends.base import AnswerKind, UpstreamAnswer, normalize_domain_names


def test_names_are_lowered_stripped_of_one_trailing_dot_deduplicated_and_sorted():
    assert normalize_domain_names(
        ["Beta.Example.ORG.", "alpha.example.org", "beta.example.org"]
    ) == (
        "alpha.example.org",
        "beta.example.org",
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["alpha.example.org", 42], "a domain name is not a string"),
        (["alpha.example.org", "not a domain"], "not a valid domain name"),
        # Python lowers the Kelvin sign to "k": it must not name kelvin.example.org.
        (["\u212aelvin.example.org"], "not a valid domain name"),
        (["example.org.."], "not a valid domain name"),
    ],
    ids=["not-a-string", "spaces", "kelvin-sign", "two-trailing-dots"],
)
def test_one_bad_name_rejects_the_whole_list(names, message):
    with pytest.raises(ValueError, match=message):
        normalize_domain_names(names)


def test_an_authoritative_answer_carries_its_normalised_list():
    answer = UpstreamAnswer.authoritative(["B.example.org", "a.example.org"])

    assert (answer.kind, answer.domains, answer.error_code, answer.cache) == (
        AnswerKind.AUTHORITATIVE,
        ("a.example.org", "b.example.org"),
        "",
        "miss",
    )
    assert answer.is_authoritative


@pytest.mark.parametrize("kind", [kind for kind in AnswerKind if kind != AnswerKind.AUTHORITATIVE])
def test_any_other_answer_carries_a_reason_and_no_domain(kind):
    answer = UpstreamAnswer.failure(kind, "why")

    assert (answer.domains, answer.error_code, answer.is_authoritative) == ((), "why", False)
    assert answer.fingerprint == ""


def test_equal_lists_have_equal_fingerprints_and_different_lists_do_not():
    first = UpstreamAnswer.authoritative(["b.example.org", "A.example.org"])
    same = UpstreamAnswer.authoritative(["a.example.org", "b.example.org", "b.example.org"])
    other = UpstreamAnswer.authoritative(["a.example.org"])

    assert first.fingerprint == same.fingerprint
    assert first.fingerprint != other.fingerprint
    assert len(first.fingerprint) == 64


@pytest.mark.parametrize(
    "answer",
    [
        UpstreamAnswer.authoritative(["a.example.org", "b.example.org"]),
        UpstreamAnswer.authoritative([]),
        UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, "no_organization"),
    ],
    ids=["list", "empty-list", "no-information"],
)
def test_the_cache_form_reads_back_as_the_same_answer_with_its_cache_status(answer):
    stored = answer.as_dict()

    assert UpstreamAnswer.from_dict(stored, cache="stale") == UpstreamAnswer(
        answer.kind, answer.domains, answer.error_code, "stale"
    )
