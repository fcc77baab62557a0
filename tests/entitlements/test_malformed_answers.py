"""Every malformed upstream answer of the corpus, over real HTTP: classified, nothing changed.

The figures of docs/reliability.md ("Bad input") show in pytest's summary.
"""

import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from core.entitlements import sync_user_entitlements
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.factory import get_backend
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests import figures
from tests.deploycenter_stub import ALPHA_SIRET
from tests.entitlements.malformed_answers import (
    CORPUS,
    ENTITLED_DOMAINS,
    LOG_SENTINEL,
    LOOKALIKE_DOMAIN,
    MANUAL_DOMAIN,
    SYNC_STATUS,
    MalformedAnswer,
    markdown_table,
)

EMAIL = "admin@alpha.example.org"
TRIGGER = "bad-input"
# A generous bound for the large bodies' memory, measured under tracemalloc: the client reads
# at most 1 MB, so it may not grow with the size of the body sent. Their times are only shown
# (pytest's figures): a loaded machine must not fail a test.
MAX_CLASSIFY_PEAK_BYTES = 48 * 1024 * 1024

_tally = {"cases": 0, "accesses_changed": 0}
_figures: list[str] = []


@figures.reporter
def _measured() -> list[str]:
    if not _tally["cases"]:
        return []
    return [
        *_figures,
        f"bad input: {_tally['cases']}/{len(CORPUS)} cases classified as expected, "
        f"{_tally['accesses_changed']} accesses changed, no unexpected exception",
    ]


@pytest.fixture
def seeded_user(db):
    """A user with two sync-created accesses, one manual access, and a recorded last answer."""
    user = User.objects.create_user(email=EMAIL)
    domains = {
        name: MailDomain.objects.create(name=name)
        for name in (*ENTITLED_DOMAINS, MANUAL_DOMAIN, LOOKALIKE_DOMAIN)
    }
    for name in ENTITLED_DOMAINS:
        MailDomainAccess.objects.create(
            user=user, maildomain=domains[name], source=MailDomainAccess.Source.ENTITLEMENTS
        )
    MailDomainAccess.objects.create(
        user=user, maildomain=domains[MANUAL_DOMAIN], source=MailDomainAccess.Source.MANUAL
    )
    EntitlementSyncState.objects.create(
        user=user,
        forwarded_claims={"siret": ALPHA_SIRET},
        status=EntitlementSyncState.Status.OK,
        entitled_domains=list(ENTITLED_DOMAINS),
        answer_fingerprint=UpstreamAnswer.authoritative(ENTITLED_DOMAINS).fingerprint,
    )
    return user


def _serve(stub, case: MalformedAnswer) -> None:
    stub.answer_raw(
        case.body,
        status=case.status,
        content_type=case.content_type,
        headers=case.headers,
        chunked=case.chunked,
    )


def _accesses() -> list[tuple]:
    """Every access row of the database, ids included: a delete and re-create shows."""
    return sorted(
        MailDomainAccess.objects.values_list("id", "user_id", "maildomain__name", "role", "source")
    )


def _classify(user: User) -> tuple[UpstreamAnswer, float, int]:
    """Ask the configured backend once; return the answer, seconds taken and peak bytes."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        answer = get_backend().get_entitlements(user=user, forwarded_claims={"siret": ALPHA_SIRET})
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return answer, elapsed, peak


def _sync(user: User, case: MalformedAnswer):
    """Run the sync as the worker would; nothing escapes, an unavailable upstream included."""
    result = sync_user_entitlements(user_id=user.pk, trigger=TRIGGER, task_id="task-bad-input")
    if case.kind == AnswerKind.UNAVAILABLE:
        assert (result.status, result.error_code) == ("unavailable", case.error_code)
        return None
    return result


def test_corpus_is_large_and_covers_every_class():
    assert len(CORPUS) >= 30
    assert len({case.id for case in CORPUS}) == len(CORPUS)
    # Every class an answer can get; "not asked" is given before any request is sent.
    assert {case.kind for case in CORPUS} == {str(kind) for kind in AnswerKind} - {"not_asked"}


def test_reliability_docs_list_every_case():
    docs = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

    # Regenerate with `python -m tests.entitlements.malformed_answers`.
    assert markdown_table() in docs.read_text()


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_malformed_answer_is_classified_and_changes_no_access(
    case, deploycenter_backend, seeded_user, caplog
):
    accesses_before = _accesses()
    _serve(deploycenter_backend, case)

    answer, classify_seconds, classify_peak = _classify(seeded_user)

    assert (answer.kind, answer.error_code) == (case.kind, case.error_code)
    if answer.is_authoritative:
        assert set(ENTITLED_DOMAINS) <= set(answer.domains)

    started = time.perf_counter()
    with caplog.at_level(logging.INFO):
        result = _sync(seeded_user, case)
    sync_seconds = time.perf_counter() - started

    accesses_after = _accesses()
    _tally["accesses_changed"] += len(set(accesses_before) ^ set(accesses_after))
    assert accesses_after == accesses_before
    assert not AccessAuditEntry.objects.exists()
    if result is not None:
        assert (result.status, result.error_code) == (SYNC_STATUS[case.kind], case.error_code)
        assert (result.added, result.removed) == ([], [])

    state = EntitlementSyncState.objects.get(user=seeded_user)
    assert (state.status, state.error_code, state.last_trigger, state.last_task_id) == (
        SYNC_STATUS[case.kind],
        case.error_code,
        TRIGGER,
        "task-bad-input",
    )
    assert state.finished_at is not None
    if answer.kind == AnswerKind.ACCESS_ENDED:
        # The organisation's subscription ended: nothing is granted from the old list.
        assert state.entitled_domains == []
    elif not answer.is_authoritative:
        # The last good answer stays the reference for provisioning grants.
        assert state.entitled_domains == list(ENTITLED_DOMAINS)

    # Nothing of the body reaches the logs, and no log line can be split by it.
    assert LOG_SENTINEL not in caplog.text
    assert EMAIL not in caplog.text
    assert not any("\n" in record.getMessage() for record in caplog.records)

    if case.large:
        assert classify_peak < MAX_CLASSIFY_PEAK_BYTES
        _figures.append(
            f"{case.id} ({case.what}; {len(case.body) / 1e6:.1f} MB body): {answer.kind}"
            f"{'/' + answer.error_code if answer.error_code else ''}: classified in "
            f"{classify_seconds * 1000:.0f} ms (traced), peak {classify_peak / 1e6:.1f} MB; "
            f"sync {sync_seconds * 1000:.0f} ms"
        )
    _tally["cases"] += 1
