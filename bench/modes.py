"""How big each benchmark mode is: smoke for CI, quick for `make bench`, full for bench-full."""

from dataclasses import dataclass

# What a run may be limited to (--only): figure 3; figures 1, 2 idle and 7; figures 2 during a
# run, 4, 5 and 6; the run with one shared worker; figure 8 (the metrics' cost); figure 9 (large
# malformed answers); figure 10 (change signals); figure 13 (a full run at the default rate
# limit, ~200 s at 10,000 users: run by hand with --only pacing, and by the smoke run).
PARTS = frozenset(
    {"queries", "logins", "resync", "shared", "metrics", "bad_input", "signals", "pacing"}
)
# What a run without --only measures: all but the pacing run, unless the mode says so.
DEFAULT_PARTS = PARTS - {"pacing"}


@dataclass(frozen=True)
class Mode:
    """The sizes of one benchmark mode."""

    name: str
    # Users of the largest full resync, and of the smaller one that memory is compared with.
    users: int
    small_users: int
    # Logins timed per figure-1 measurement (the inline 2 s case is run by `inline_threads`).
    logins: int
    inline_slow_logins: int
    inline_threads: int
    # Logins whose rights are awaited with an idle queue; at most this many during a full run.
    rights_probes: int
    noop_tasks: int
    storm_logins: int = 1000
    storm_users: int = 100
    # Syncs timed with the metrics on, and as many off (figure 8).
    metrics_syncs: int = 2000
    # Asks timed per large malformed answer (figure 9).
    bad_input_repeat: int = 5
    # Figure 10: account signals timed (idle, and as many during a full run at most), the
    # admins of the signalled organisation; the endpoint's open-loop offered rates (signals a
    # second, each for this many seconds) and the gunicorn (workers, threads) it is timed with.
    signal_probes: int = 100
    signal_organisation_admins: int = 1000
    signal_endpoint_rates: tuple[float, ...] = (250, 500, 1000)
    signal_endpoint_seconds: float = 4
    signal_endpoint_webs: tuple[tuple[int, int], ...] = ((2, 1), (4, 1), (4, 4))
    # Figure 10's storm: account signals sent in one second over `storm_users` users.
    signal_storm_signals: int = 1000
    # ENTITLEMENTS_CHANGE_RECHECK_SECONDS for the benchmark and its workers (None: the
    # default, 20 s): the storm's count waits for the settle and the recheck to be done.
    change_recheck_seconds: float | None = None
    writes_docs: bool = True
    # Whether a run without --only includes the pacing run (figure 13).
    paces_by_default: bool = False
    # Seconds to let PostgreSQL's statistics settle before counting access rows written:
    # backends report when idle, within 10 s. CI's smoke run only checks the figure exists.
    stats_settle_seconds: float = 11


MODES = {
    "smoke": Mode(
        name="smoke",
        users=300,
        small_users=100,
        logins=100,
        inline_slow_logins=8,
        inline_threads=8,
        rights_probes=10,
        noop_tasks=100,
        metrics_syncs=100,
        bad_input_repeat=1,
        signal_probes=10,
        signal_organisation_admins=50,
        signal_endpoint_rates=(100,),
        signal_endpoint_seconds=1,
        signal_endpoint_webs=((2, 1),),
        # Only that the storm's figures come out: 27 s of waiting down to 10, 1,000 signals
        # (~9 s through the web on a loaded machine) down to 200.
        signal_storm_signals=200,
        change_recheck_seconds=3,
        writes_docs=False,
        paces_by_default=True,
        stats_settle_seconds=1,
    ),
    "quick": Mode(
        name="quick",
        users=10_000,
        small_users=1_000,
        logins=1000,
        inline_slow_logins=64,
        inline_threads=8,
        rights_probes=200,
        noop_tasks=2000,
    ),
    "full": Mode(
        name="full",
        users=100_000,
        small_users=10_000,
        logins=2000,
        inline_slow_logins=160,
        inline_threads=8,
        rights_probes=300,
        noop_tasks=5000,
    ),
}
