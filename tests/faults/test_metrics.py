"""GET /metrics after real syncs through real `celery worker` subprocesses (prefork children
writing to one PROMETHEUS_MULTIPROC_DIR): a login, a full run, an outage. The counters move by
exactly what happened, and no e-mail, siret or domain name shows anywhere in the scrape."""

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core.entitlements import request_resync, request_sync
from core.models import EntitlementSyncState, MailDomainAccess, SyncRun
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import ALPHA, BETA, DOMAINS, synced_domains
from tests.support import wait_until

TOKEN = "metrics-test-token"
NS = "messages_entitlements"


@pytest.fixture
def metrics_dir(tmp_path, settings):
    """The directory the workers write their counts to, read by this process's /metrics."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    settings.PROMETHEUS_MULTIPROC_DIR = str(directory)
    settings.METRICS_TOKEN = TOKEN
    return directory


def scrape() -> str:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return response.content.decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels) -> float:
    """One sample's value, 0 when absent (a counter never incremented is not written)."""
    return scraped.get((f"{NS}_{name}", tuple(sorted(labels.items()))), 0.0)


def start_metrics_worker(start_worker, metrics_dir, **variables):
    # Two prefork children: their counts must add up in one scrape.
    return start_worker(concurrency=2, PROMETHEUS_MULTIPROC_DIR=metrics_dir, **variables)


def test_a_login_moves_the_sync_grant_and_upstream_counters(start_worker, make_admins, metrics_dir):
    [admin] = make_admins(1, upstream_domains=(ALPHA, BETA))
    start_metrics_worker(start_worker, metrics_dir)

    request_sync(user=admin, trigger="login")
    wait_until(lambda: synced_domains(admin) == {ALPHA, BETA}, timeout=30, message="the sync")
    scraped = wait_until(
        lambda: (
            (s := samples(scrape()))
            and value(s, "syncs_total", trigger="login", outcome="ok")
            and s
        ),
        timeout=10,
        message="the sync counted",
    )

    assert value(scraped, "syncs_total", trigger="login", outcome="ok") == 1
    assert value(scraped, "accesses_granted_total", trigger="login") == 2
    assert value(scraped, "accesses_revoked_total", trigger="login") == 0
    assert value(scraped, "upstream_requests_total", answer="authoritative") == 1
    assert value(scraped, "upstream_request_seconds_count", answer="authoritative") == 1
    assert value(scraped, "rate_limit_wait_seconds_count", priority="interactive") == 1
    assert value(scraped, "circuit_state", state="closed") == 1
    assert value(scraped, "queue_messages", queue="interactive") == 0
    assert value(scraped, "sync_requests_waiting") == 0


def test_a_full_run_counts_every_user_the_held_revocations_and_the_run(
    start_worker, make_admins, metrics_dir
):
    users = 30
    admins = make_admins(users, upstream_domains=(BETA,), held=(ALPHA,))
    # A budget of 10 revocations: the other 20 are held for an operator.
    start_metrics_worker(
        start_worker,
        metrics_dir,
        ENTITLEMENTS_SYNC_BATCH_SIZE=7,
        ENTITLEMENTS_MAX_REVOKE_SHARE=0,
        ENTITLEMENTS_MAX_REVOKE_MIN=10,
    )

    started = timezone.now()
    request_resync(trigger="periodic")
    run = wait_until(
        lambda: SyncRun.objects.filter(started_at__gte=started, status="done").first(),
        timeout=120,
        message="the full run",
    )
    assert all(BETA in synced_domains(user) for user in admins)
    scraped = samples(scrape())

    # The 20 users whose revocation the budget held say so on their row, with the reason.
    assert value(scraped, "syncs_total", trigger="periodic", outcome="ok") == 10
    assert value(scraped, "syncs_total", trigger="periodic", outcome="revocations_held") == 20
    held_users = EntitlementSyncState.objects.filter(
        user__in=admins, status="revocations_held", error_code="run_budget"
    )
    assert held_users.count() == 20
    assert all(ALPHA in synced_domains(state.user) for state in held_users)
    assert value(scraped, "run_users_total", outcome="done") == users
    assert value(scraped, "accesses_granted_total", trigger="periodic") == users
    assert value(scraped, "accesses_revoked_total", trigger="periodic") == 10
    assert value(scraped, "revocations_held_total") == 20
    assert value(scraped, "held_revocations_pending") == 20
    assert value(scraped, "upstream_requests_total", answer="authoritative") == users
    assert value(scraped, "rate_limit_wait_seconds_count", priority="bulk") == users
    assert value(scraped, "runs_total", scope="all", status="done") == 1
    assert value(scraped, "run_duration_seconds_count", scope="all") == 1
    assert value(scraped, "run_users_per_second", scope="all") > 0
    assert value(scraped, "last_full_run_finished_timestamp_seconds") == pytest.approx(
        run.finished_at.timestamp()
    )


def test_an_outage_shows_unavailable_answers_the_open_circuit_and_refusals(
    start_worker, make_admins, upstream, metrics_dir
):
    admins = make_admins(5)
    # One child: the calls come one after the other, so the counts are exact.
    start_worker(
        concurrency=1,
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        ENTITLEMENTS_SYNC_MAX_RETRIES=0,
        ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD=3,
        ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS=120,
    )
    upstream.fail_with(503)

    for admin in admins:
        request_sync(user=admin, trigger="login")
    scraped = wait_until(
        lambda: (
            (s := samples(scrape()))
            and value(s, "syncs_total", trigger="login", outcome="unavailable") == 5
            and s
        ),
        timeout=60,
        message="five unavailable syncs",
    )

    assert value(scraped, "upstream_requests_total", answer="unavailable") == 3 == upstream.calls
    assert value(scraped, "upstream_refused_total", reason="circuit_open") == 2
    assert value(scraped, "circuit_transitions_total", transition="opened") == 1
    assert value(scraped, "circuit_state", state="open") == 1
    assert value(scraped, "accesses_revoked_total", trigger="login") == 0
    assert MailDomainAccess.objects.filter(user__in=admins).count() == 0


def test_no_label_carries_personal_data(start_worker, make_admins, upstream, metrics_dir):
    admins = make_admins(3, upstream_domains=DOMAINS)
    start_metrics_worker(start_worker, metrics_dir)
    for admin in admins:
        request_sync(user=admin, trigger="login")
    wait_until(
        lambda: all(synced_domains(user) == set(DOMAINS) for user in admins),
        timeout=30,
        message="the syncs",
    )
    # A run too, so the run's metrics are in the scrape.
    request_resync(trigger="periodic")
    wait_until(lambda: SyncRun.objects.filter(status="done").exists(), timeout=60, message="run")
    text = scrape()

    personal = [user.email for user in admins] + [str(user.pk) for user in admins]
    personal += [ALPHA_SIRET, "example.org", *DOMAINS]
    assert [item for item in personal if item in text] == []
    label_values = {
        label
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for name, label in sample.labels.items()
        # Bucket bounds and quantiles are numbers ("0.5"): the dot check is for the others.
        if name not in ("le", "quantile")
    }
    assert "@" not in "".join(label_values)
    assert all("." not in item for item in label_values), label_values
