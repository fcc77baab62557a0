"""Flower as `manage.py run_flower` starts it (`python -m worker.flower_server -A messages
flower ...`), with its Prometheus `/metrics` behind the basic auth of its pages.

Flower 2.2 serves `/metrics` to anybody even with `--basic-auth`: its handler is not
`authenticated`, and the series name every worker (`worker="interactive@<host>"`) and task.
`/healthcheck` stays open: it answers `OK` and nothing else, for probes that hold no
credentials (compose's healthcheck, a load balancer).
"""

import tornado.web
from celery.__main__ import main as celery_main
from flower import urls
from flower.views import monitor


class AuthenticatedMetrics(monitor.Metrics):
    """Flower's Prometheus metrics, asking for the credentials its pages ask for."""

    @tornado.web.authenticated
    async def get(self):
        await super().get()


def main() -> None:
    """Run the `celery` command line with Flower's metrics handler replaced."""
    # Flower builds its application from this list when the command starts.
    for index, entry in enumerate(urls.handlers):
        if isinstance(entry, tuple) and entry[1] is monitor.Metrics:
            urls.handlers[index] = (entry[0], AuthenticatedMetrics, *entry[2:])
    celery_main()


if __name__ == "__main__":
    main()
