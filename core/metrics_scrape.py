"""What a /metrics scrape reads: every process's recorded metrics (core/metrics.py), and the
state that lives in shared stores, read at each scrape with cheap queries."""

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.metrics import _REGISTRY, NAMESPACE, QUEUES
from core.models import SyncRun

logger = logging.getLogger(__name__)


class SharedStateCollector(Collector):
    """What lives in shared stores, read at each scrape with cheap queries: queue depths
    (Redis LLEN), requests waiting for the sweep and pending held revocations (two counts),
    the end of the last full run, how fresh the admins' rights are (one aggregate), whether
    full runs fit in their interval, the circuit's state (read by `read_circuit_state`)."""

    def __init__(self, read_circuit_state: Callable[[], str]):
        self._read_circuit_state = read_circuit_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = (
            self._queue_depths,
            self._sweep_backlog,
            self._held_pending,
            self._last_full_run,
            self._admin_freshness,
            self._resync_capacity,
            self._circuit,
        )
        for read in readings:
            try:
                yield from read()
            except Exception as error:
                # One store down must not blank the scrape; the metric is absent meanwhile.
                logger.warning("metrics: %s unreadable: %s", read.__name__, type(error).__name__)

    def _queue_depths(self) -> Iterable[GaugeMetricFamily]:
        from messages.celery_app import app as celery_app

        family = GaugeMetricFamily(
            f"{NAMESPACE}_queue_messages", "Tasks waiting in a Celery queue.", labels=["queue"]
        )
        with celery_app.connection_for_read() as connection:
            for queue in QUEUES:
                family.add_metric([queue], _queue_depth(connection, queue))
        yield family

    def _sweep_backlog(self) -> Iterable[GaugeMetricFamily]:
        from core.selectors import outstanding_requests

        grace = timedelta(seconds=settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS)
        count = outstanding_requests(now=timezone.now(), grace=grace).count()
        yield GaugeMetricFamily(
            f"{NAMESPACE}_sync_requests_waiting",
            "Sync requests no task carries: the sweep will send them.",
            value=count,
        )

    def _held_pending(self) -> Iterable[GaugeMetricFamily]:
        from core.selectors import pending_held_revocations

        yield GaugeMetricFamily(
            f"{NAMESPACE}_held_revocations_pending",
            "Held revocations waiting for an operator to release or discard them.",
            value=pending_held_revocations().count(),
        )

    def _last_full_run(self) -> Iterable[GaugeMetricFamily]:
        finished = (
            SyncRun.objects.filter(scope=SyncRun.Scope.ALL, status=SyncRun.Status.DONE)
            .order_by("-started_at")
            .values_list("finished_at", flat=True)
            .first()
        )
        if finished is not None:
            yield GaugeMetricFamily(
                f"{NAMESPACE}_last_full_run_finished_timestamp_seconds",
                "When the last full resync run that completed ended (Unix time).",
                value=finished.timestamp(),
            )

    def _admin_freshness(self) -> Iterable[GaugeMetricFamily]:
        from core.selectors import admin_freshness

        interval = timedelta(seconds=settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS)
        fresh = admin_freshness(now=timezone.now(), interval=interval)
        ages = GaugeMetricFamily(
            f"{NAMESPACE}_admin_rights_age_seconds",
            "Time since an authoritative answer last confirmed an admin's rights, "
            "at the quantile (1: the oldest; admins never confirmed aside).",
            labels=["quantile"],
        )
        for quantile, age in (
            ("0.5", fresh.p50_age),
            ("0.99", fresh.p99_age),
            ("1", fresh.max_age),
        ):
            if age is not None:
                ages.add_metric([quantile], age)
        stale = GaugeMetricFamily(
            f"{NAMESPACE}_admins_unconfirmed",
            "Admins unconfirmed for over this many resync intervals, or ever.",
            labels=["intervals"],
        )
        stale.add_metric(["1"], fresh.older_than_one_interval)
        stale.add_metric(["2"], fresh.older_than_two_intervals)
        stale.add_metric(["never"], fresh.never_confirmed)
        admins = GaugeMetricFamily(
            f"{NAMESPACE}_admins",
            "Users whose last authoritative answer named a domain.",
            fresh.admins,
        )
        yield from (ages, stale, admins)

    def _resync_capacity(self) -> Iterable[GaugeMetricFamily]:
        from core.capacity import last_run_capacity

        if capacity := last_run_capacity():
            yield GaugeMetricFamily(
                f"{NAMESPACE}_resync_capacity_ratio",
                "The last full run's users / rate limit (or duration if longer) over the resync "
                "interval: above 1, runs cannot keep up and the next ones are skipped.",
                value=capacity.ratio,
            )

    def _circuit(self) -> Iterable[GaugeMetricFamily]:
        state = self._read_circuit_state()
        family = GaugeMetricFamily(
            f"{NAMESPACE}_circuit_state",
            "The shared circuit breaker: 1 for its current state.",
            labels=["state"],
        )
        for name in ("closed", "open", "half_open"):
            family.add_metric([name], 1.0 if state == name else 0.0)
        yield family


def render(*, read_circuit_state: Callable[[], str]) -> bytes:
    """The whole service's metrics in Prometheus' text format; the caller tells how to read
    the circuit's state ("closed", "open" or "half_open") at scrape time."""
    registry = CollectorRegistry(auto_describe=True)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(_OwnMetrics())
    registry.register(SharedStateCollector(read_circuit_state))
    return generate_latest(registry)


class _OwnMetrics(Collector):
    """This process's own metrics, when processes do not share a directory."""

    def collect(self):
        return _REGISTRY.collect()


def _queue_depth(connection, queue: str) -> int:
    """The messages waiting in `queue`: 0 for a queue the broker does not know yet."""
    # On RabbitMQ a passive declare never creates a queue, and NOT_FOUND (a queue no worker
    # declared yet) closes the channel it came on: hence a channel of its own. kombu's Redis
    # transport takes an empty queue for a missing one and checks without the broker key
    # prefix (CELERY_BROKER_KEY_PREFIX), so there a plain declare, which writes nothing, reads it.
    passive = connection.transport.driver_type != "redis"
    with connection.channel() as channel:
        try:
            return channel.queue_declare(queue, passive=passive).message_count
        except ChannelError:
            return 0
