"""The global rate limit toward the entitlements service: a paced schedule in real Redis shared
by several OS processes, with a reserve of slots that lets login syncs go first."""

import itertools
import json
import statistics
import threading
import time

import pytest
from django.core.cache import caches
from django_redis import get_redis_connection

from core.entitlements.rate_limit import get_rate_limiter
from core.entitlements.upstream_guard import Priority
from tests.entitlements import upstream_guard_processes
from tests.support import wait_until

# Saturates the CPU or measures a rate or a delay: `make test` runs it apart, alone (conftest.py).
pytestmark = pytest.mark.heavy

RATE = 100.0
BURST = 20
RESERVE = 0.25  # 5 of the 20 slots ahead are for interactive callers only


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


def test_bulk_callers_never_burst_after_an_idle_spell_but_logins_may(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.1  # one slot every 10 s: none frees meanwhile
    limiter = get_rate_limiter()

    bulk = [limiter.acquire(priority=Priority.BULK, timeout=0) for _ in range(BURST)]
    interactive = [limiter.acquire(priority=Priority.INTERACTIVE, timeout=0) for _ in range(BURST)]

    # The idle schedule gives bulk the slot now, then the next one 10 s later (too late here).
    assert bulk.count(True) == 1
    # Logins may go at once up to the burst, the bulk call counted in it.
    assert interactive.count(True) == BURST - 1
    assert interactive[-1] is False
    assert limiter.state()["tokens"] < 1


def test_logins_jump_the_slots_a_run_booked_and_push_its_next_one_back(settings, limit):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 5.0  # slots 0.2 s apart
    interval = 0.2
    reserved = int(BURST * RESERVE)
    bookable = BURST - reserved  # the run may book this many slots, the reserve left to logins
    limiter = get_rate_limiter()
    start = threading.Barrier(bookable + 2)
    granted: list[float] = []

    def bulk_call() -> None:
        start.wait()
        assert limiter.acquire(priority=Priority.BULK, timeout=30)
        granted.append(time.monotonic())

    threads = [threading.Thread(target=bulk_call) for _ in range(bookable + 1)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    # Every slot the run may book is booked: its last thread waits to book.
    wait_until(
        lambda: limiter.state()["booked_ahead_seconds"] >= (bookable - 1) * interval + 0.02,
        timeout=5,
        every=0.01,
        message="the run's threads booking their slots",
    )
    bulk_now = limiter.acquire(priority=Priority.BULK, timeout=0)
    logins = []
    for _ in range(reserved):
        asked = time.monotonic()
        assert limiter.acquire(priority=Priority.INTERACTIVE, timeout=0)
        logins.append(time.monotonic() - asked)
    for thread in threads:
        thread.join(timeout=30)

    assert bulk_now is False
    assert max(logins) < 0.1, "each login went at once, ahead of the run's booked slots"
    granted.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(granted)]
    # The booked slots went one at a time, an interval apart...
    assert min(gaps[: bookable - 1]) > interval * 0.25
    # ...and the run's next slot came after the logins' ones: nobody went twice in a slot.
    assert granted[-1] - began >= (bookable + reserved) * interval - 0.1


def test_acquire_sleeps_until_its_slot(settings, limit):
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


def test_four_processes_of_bulk_callers_are_paced_evenly_at_the_limit(limit):
    """Four workers of a full run, as if on four machines, ask for slots as fast as they can,
    after an idle spell: no burst at the start, no second over the rate, even gaps."""
    seconds = 3.0
    results = run_processes([("bulk", 4, 0)] * 4, env=limit, seconds=seconds)

    grants = sorted(at for result in results for at in result["granted"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(grants)]
    in_first_half_second = sum(1 for at in grants if at < grants[0] + 0.5)
    per_thread = [count for result in results for count in result["per_thread"]]
    print(
        f"\n4 processes x 4 threads for {seconds} s at limit {RATE}/s burst {BURST}: "
        f"{len(grants)} calls (rate x T {RATE * seconds:.0f}), busiest second "
        f"{busiest_second(grants)}, first 0.5 s {in_first_half_second}, gap median "
        f"{statistics.median(gaps) * 1000:.1f} ms p95 {p95(gaps) * 1000:.1f} ms, per thread "
        f"{min(per_thread)}-{max(per_thread)}"
    )
    # Bulk calls take no burst: at most the rate, plus one for where the window falls. Grant
    # times are taken by the callers after waking: allow 5 % for wake-ups on a busy machine.
    assert len(grants) <= RATE * seconds + 1
    assert busiest_second(grants) <= RATE * 1.05 + 1
    # A token bucket would have let (burst - reserve) calls go at once at the start.
    assert in_first_half_second <= RATE * 0.5 * 1.1 + 1
    # Evenly spaced: the typical gap is the interval (a bucket's waiters go in clumps).
    assert 0.8 / RATE <= statistics.median(gaps) <= 1.25 / RATE
    # ...really saturated, or the bounds above prove nothing, and nobody starved.
    assert len(grants) >= 0.9 * RATE * seconds
    fair_share = len(grants) / len(per_thread)
    assert min(per_thread) >= 0.5 * fair_share


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
