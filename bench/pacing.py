"""Figure 13: a full run at the default rate limit, as DeployCenter sees it, calls per second.

The stub counts the calls it receives per tenth of a second; this turns the counts into the
figures: calls per second over the run's first 10 s and over its steady part, the busiest
one-second window (sliding, in tenths), and a compact per-second curve for the docs.
"""

from bench.report import percentile

# The shipped default: the rest of the benchmark lifts the limit to 1,000/s.
PACED_RATE_PER_SECOND = 50
# The first seconds of a run, where a token bucket spends its burst.
START_SECONDS = 10
# The run's tail, where the last batches finish and calls thin out: not its steady part.
TAIL_SECONDS = 5
# Seconds between two logins whose rights are awaited during the run (~1.5 logins/s).
LOGIN_PAUSE_SECONDS = 0.5


def per_second(ticks: dict[int, int]) -> list[int]:
    """Calls in each second from the first call to the last (tenths grouped by ten)."""
    if not ticks:
        return []
    first = min(ticks)
    seconds = (max(ticks) - first) // 10 + 1
    counts = [0] * seconds
    for tick, calls in ticks.items():
        counts[(tick - first) // 10] += calls
    return counts


def busiest_window(ticks: dict[int, int], *, tenths: int, within: range | None = None) -> int:
    """The most calls in any `tenths` consecutive tenths of a second (a sliding window),
    among windows starting at the tenths in `within` (counted from the first call)."""
    if not ticks:
        return 0
    first = min(ticks)
    span = max(ticks) - first + 1
    starts = within or range(span)
    return max(
        sum(ticks.get(first + start + offset, 0) for offset in range(tenths))
        for start in starts
        if start < span
    )


def _spread(prefix: str, counts: list[int]) -> dict[str, float]:
    return {
        f"{prefix}_p5": percentile(counts, 0.05),
        f"{prefix}_p50": percentile(counts, 0.50),
        f"{prefix}_p95": percentile(counts, 0.95),
        f"{prefix}_max": max(counts),
    }


def pacing_figures(ticks: dict[int, int]) -> dict[str, float]:
    """The figures of one paced run from the stub's counts per tenth of a second."""
    counts = per_second(ticks)
    steady = counts[START_SECONDS:-TAIL_SECONDS] or counts
    figures = {
        "pacing_calls": sum(counts),
        "pacing_call_seconds": len(counts),
        **_spread("pacing_calls_per_s_first_10s", counts[:START_SECONDS]),
        **_spread("pacing_calls_per_s_steady", steady),
        # Sliding: a burst straddling two whole seconds shows here, not in the series above.
        "pacing_busiest_1s_window_first_10s": busiest_window(
            ticks, tenths=10, within=range(START_SECONDS * 10)
        ),
        "pacing_busiest_1s_window": busiest_window(ticks, tenths=10),
        "pacing_busiest_100ms": max(ticks.values(), default=0),
    }
    return figures


def curve(ticks: dict[int, int], *, head: int = 15) -> str:
    """The per-second counts, compact: the first `head` seconds one by one, then the rest as
    a histogram of how many seconds saw each count (the last `TAIL_SECONDS` apart)."""
    counts = per_second(ticks)
    body = counts[head:-TAIL_SECONDS] if len(counts) > head + TAIL_SECONDS else []
    histogram = {}
    for count in sorted(set(body)):
        histogram[count] = body.count(count)
    tail = counts[-TAIL_SECONDS:] if body else counts[head:]
    return (
        f"first {min(head, len(counts))} s: {' '.join(map(str, counts[:head]))}; "
        f"then calls/s x seconds: {' '.join(f'{c}x{n}' for c, n in histogram.items())}; "
        f"last {len(tail)} s: {' '.join(map(str, tail))}"
    )
