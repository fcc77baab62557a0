"""The global rate limit toward the entitlements service: a token bucket in real Redis shared
by several OS processes, with a reserve that lets login syncs go first."""

import json
import statistics
import time

import pytest
from django.core.cache import caches
from django_redis import get_redis_connection

from core.entitlements.rate_limit import get_rate_limiter
from core.entitlements.upstream_guard import Priority
from tests.entitlements import upstream_guard_processes

# Saturates the CPU or measures a rate or a delay: `make test` runs it apart, alone (conftest.py).
pytestmark = pytest.mark.heavy

RATE = 100.0
BURST = 20
RESERVE = 0.25  # 5 of the 20 tokens are for interactive callers only


@pytest.fixture
def limit(settings):
    """Rate-limit settings for this test and the processes it starts; keys deleted after."""
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = RATE
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = BURST
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = RESERVE
    prefix = caches["default"].key_prefix
    yield {
        "CACHE_KEY_PREFIX": prefix,
        "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": str(RATE),
        "ENTITLEMENTS_RATE_LIMIT_BURST": str(BURST),
        "ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE": str(RESERVE),
    }
    connection = get_redis_connection("default")
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


def run_processes(specs: list[tuple[str, int, float]], *, env: dict, seconds: float) -> list:
    """Start one process per (priority, threads, pace), release them together, collect."""
    processes = [
        upstream_guard_processes.start("hammer", priority, str(threads), str(pace), env=env)
        for priority, threads, pace in specs
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    start_at = time.time() + 0.2
    for process in processes:
        process.stdin.write(f"{start_at} {start_at + seconds}\n")
        process.stdin.flush()
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        results.append(json.loads(out.splitlines()[-1]))
    return results


def busiest_second(times: list[float]) -> int:
    """The most grants inside any one-second sliding window."""
    times = sorted(times)
    busiest, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def test_a_rate_of_zero_turns_the_limit_off(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0
    limiter = get_rate_limiter()

    granted = [limiter.acquire(priority=Priority.BULK, timeout=0) for _ in range(BURST * 5)]

    assert all(granted)
    assert limiter.state() == {"enabled": False}


def test_bulk_callers_leave_the_reserve_to_interactive_ones(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.1  # nothing refills during the test
    limiter = get_rate_limiter()

    bulk = [limiter.acquire(priority=Priority.BULK, timeout=0) for _ in range(BURST)]
    interactive = [limiter.acquire(priority=Priority.INTERACTIVE, timeout=0) for _ in range(10)]

    reserved = int(BURST * RESERVE)
    assert bulk.count(True) == BURST - reserved
    assert interactive.count(True) == reserved
    assert limiter.state()["tokens"] < 1


def test_acquire_sleeps_until_a_token_refills(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 10.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    limiter = get_rate_limiter()
    assert limiter.acquire(priority=Priority.BULK, timeout=0)

    started = time.monotonic()
    assert limiter.acquire(priority=Priority.BULK, timeout=2)
    waited = time.monotonic() - started

    assert 0.05 < waited < 0.5  # one token refills in 0.1 s


def test_acquire_gives_up_at_its_timeout(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    limiter = get_rate_limiter()
    assert limiter.acquire(priority=Priority.INTERACTIVE, timeout=0)

    started = time.monotonic()
    assert not limiter.acquire(priority=Priority.INTERACTIVE, timeout=0.3)
    waited = time.monotonic() - started

    assert 0.3 <= waited < 0.6


def test_combined_rate_of_four_processes_stays_under_the_limit(limit):
    """Four workers of a full run, as if on four machines, ask for tokens as fast as they can."""
    seconds = 2.5
    results = run_processes([("bulk", 4, 0)] * 4, env=limit, seconds=seconds)

    grants = [at for result in results for at in result["granted"]]
    # Once the initial burst is spent, the rate is the limit's own.
    settled = [at for at in grants if at >= min(grants) + 1.0]
    print(
        f"\n4 processes x 4 threads for {seconds} s at limit {RATE}/s burst {BURST}: "
        f"{len(grants)} calls (cap {RATE * seconds + BURST:.0f}), busiest second "
        f"{busiest_second(grants)}, {len(settled) / (seconds - 1):.1f}/s after the first second"
    )
    # The bucket starts full: at most BURST more than the rate over the run.
    assert len(grants) <= RATE * seconds + BURST
    # Grant times are taken by the callers a little after Redis granted: allow 50 ms of that.
    assert busiest_second(grants) <= RATE * 1.05 + BURST
    # ...and it was really saturated, or the bound above proves nothing.
    assert len(grants) >= 0.9 * RATE * seconds
    assert all(len(result["granted"]) > 0.1 * len(grants) for result in results)


def test_interactive_callers_go_first_while_bulk_saturates(limit):
    seconds = 2.0
    bulk_a, bulk_b, bulk_c, interactive = run_processes(
        # Logins arrive at about 20/s, well under the limit; bulk asks for far more than it.
        [("bulk", 4, 0), ("bulk", 4, 0), ("bulk", 4, 0), ("interactive", 1, 0.05)],
        env=limit,
        seconds=seconds,
    )

    bulk_waits = bulk_a["waits"] + bulk_b["waits"] + bulk_c["waits"]
    grants = bulk_a["granted"] + bulk_b["granted"] + bulk_c["granted"] + interactive["granted"]
    interactive_p95 = p95(interactive["waits"])
    bulk_median = statistics.median(bulk_waits)
    print(
        f"\nbulk saturating, limit {RATE}/s: {len(interactive['waits'])} interactive calls, "
        f"wait p95 {interactive_p95 * 1000:.1f} ms, max {max(interactive['waits']) * 1000:.1f} ms;"
        f" {len(bulk_waits)} bulk calls, wait median {bulk_median * 1000:.1f} ms, "
        f"p95 {p95(bulk_waits) * 1000:.1f} ms; combined {len(grants) / seconds:.1f}/s"
    )
    assert len(interactive["waits"]) >= 0.8 * seconds / 0.05
    assert interactive_p95 < 0.05
    assert bulk_median > 2 * interactive_p95
    assert len(bulk_waits) >= 0.6 * RATE * seconds  # bulk was really taking the rest
    assert len(grants) <= RATE * seconds + BURST
