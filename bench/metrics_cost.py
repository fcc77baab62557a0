"""Figure 8: what recording the Prometheus metrics adds to one user's sync.

In this process, with PROMETHEUS_MULTIPROC_DIR set as in production (every count written to a
memory-mapped file): the same users' syncs, through the real DeployCenter client to the stub
(no latency: the worst case for a relative cost), PostgreSQL and Redis, alternately with the
metrics on and off, so both sides see the same machine load. The recording calls alone are
also timed, a figure that the noise of a whole sync cannot blur.
"""

import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from bench.data import create_users, delete_users
from core import metrics
from core.entitlements import sync_user_entitlements

_KIND = "metricscost"
# The calls an unchanged login sync makes (a granting one adds one more).
_CALLS_REPEAT = 20_000
# Every function the sync records a metric with: replaced by no-ops for the "off" side.
_RECORDERS = (
    "sync_ended",
    "accesses_changed",
    "revocations_held",
    "held_revocations_resolved",
    "upstream_answered",
    "upstream_refused",
    "circuit_transition",
    "rate_limit_waited",
    "run_ended",
)


def metrics_cost(*, syncs: int) -> dict[str, float]:
    """Median ms of a sync with and without metrics, the overhead in %, the calls' µs."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    users = create_users(kind=_KIND, indexes=range(max(2, syncs // 2)))
    try:
        for user in users:  # the first sync grants; the timed ones change nothing
            sync_user_entitlements(user_id=user.pk, trigger="login")
        timings: dict[bool, list[float]] = {True: [], False: []}
        for number in range(syncs * 2):
            enabled = number % 4 in (0, 3)  # on, off, off, on: neither side always goes first
            user = users[(number // 2) % len(users)]
            with nullcontext() if enabled else _metrics_off():
                started = time.perf_counter()
                sync_user_entitlements(user_id=user.pk, trigger="login")
                timings[enabled].append(time.perf_counter() - started)
    finally:
        delete_users(kind=_KIND)
    if not directory or not any(Path(directory).glob("*.db")):
        raise RuntimeError("the metrics were not written to PROMETHEUS_MULTIPROC_DIR")
    on, off = statistics.median(timings[True]), statistics.median(timings[False])
    calls = _calls_seconds()
    return {
        "metrics_sync_ms_on": round(on * 1000, 3),
        "metrics_sync_ms_off": round(off * 1000, 3),
        "metrics_overhead_percent": round((on - off) / off * 100, 2),
        "metrics_calls_us_per_sync": round(calls * 1e6, 1),
        "metrics_calls_percent_of_sync": round(calls / off * 100, 3),
    }


def _metrics_off():
    """The sync without its metrics: every recording function of core.metrics does nothing."""
    return mock.patch.multiple(metrics, **{name: lambda **kwargs: None for name in _RECORDERS})


def _calls_seconds() -> float:
    """Seconds the recording calls of one unchanged sync take, on average."""
    started = time.perf_counter()
    for _ in range(_CALLS_REPEAT):
        metrics.rate_limit_waited(priority="interactive", seconds=0.0)
        metrics.upstream_answered(answer="authoritative", seconds=0.005)
        metrics.sync_ended(trigger="login", status="ok")
    return (time.perf_counter() - started) / _CALLS_REPEAT
