"""core/metrics_endpoint.py: GET /metrics, refused without its token, served as Prometheus
text with the shared circuit's state read at scrape time."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "a-metrics-token"
NS = "messages_entitlements"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.DEBUG = False
    return TOKEN


def scraped(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.django_db
def test_refused_outside_debug_when_no_token_is_set(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False

    response = client.get("/metrics")

    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong-token", f"Basic {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN}x"],
)
def test_refused_without_the_right_bearer_token(client, token, authorization):
    response = client.get("/metrics", HTTP_AUTHORIZATION=authorization)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.django_db
def test_served_with_the_token_as_prometheus_text(client, token):
    response = client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_open_in_debug_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = True

    assert client.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_only_get(client, token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 405


@pytest.mark.django_db
def test_the_scrape_reads_the_shared_circuit(client, token):
    # No failure recorded on this test's keys: the shared circuit is closed.
    values = scraped(client)

    assert values[(f"{NS}_circuit_state", (("state", "closed"),))] == 1
    assert values[(f"{NS}_circuit_state", (("state", "open"),))] == 0
