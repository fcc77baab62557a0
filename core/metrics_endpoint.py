"""`GET /metrics`: the whole service's metrics for Prometheus, behind a bearer token."""

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from core import metrics_scrape
from core.entitlements import upstream_status


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics, to a scraper that sends `Authorization: Bearer <METRICS_TOKEN>`.

    Without METRICS_TOKEN the endpoint is open in debug only, and refuses every scrape outside.
    """
    token = settings.METRICS_TOKEN
    if not token and not settings.DEBUG:
        return JsonResponse(
            {"detail": "Metrics are disabled: set METRICS_TOKEN to scrape them."}, status=403
        )
    if token and not _bearer_matches(request, token):
        response = JsonResponse(
            {"detail": "Send the metrics token: Authorization: Bearer <METRICS_TOKEN>."},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = metrics_scrape.render(read_circuit_state=lambda: upstream_status()["circuit"]["state"])
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    return scheme == "Bearer" and hmac.compare_digest(sent.encode(), token.encode())
