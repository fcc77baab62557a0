"""worker/flower_server.py: Flower started with its /metrics handler swapped for one that asks
for the credentials of its pages (the whole path, a real Flower behind basic auth, is
tests/worker/commands/test_run_flower.py's test_flower_metrics_need_credentials...)."""

import pytest
from flower import urls
from flower.views import monitor

from worker import flower_server


@pytest.fixture
def flower_handlers():
    """Flower's handler list as the test found it, restored after."""
    saved = list(urls.handlers)
    yield urls.handlers
    urls.handlers[:] = saved


def test_the_metrics_route_gets_the_authenticated_handler_then_celery_runs(
    flower_handlers, monkeypatch
):
    started = []
    monkeypatch.setattr(flower_server, "celery_main", lambda: started.append(True))

    flower_server.main()

    routes = {entry[0]: entry[1] for entry in flower_handlers if isinstance(entry, tuple)}
    assert routes["/metrics"] is flower_server.AuthenticatedMetrics
    assert issubclass(flower_server.AuthenticatedMetrics, monitor.Metrics)
    assert started == [True]
    # Every other route is Flower's own.
    assert monitor.Metrics not in routes.values()


def test_the_handler_asks_for_a_login_before_it_reads_anything():
    # tornado.web.authenticated wraps the method: the original is kept as __wrapped__.
    get = flower_server.AuthenticatedMetrics.get

    assert get.__wrapped__.__qualname__ == "AuthenticatedMetrics.get"
