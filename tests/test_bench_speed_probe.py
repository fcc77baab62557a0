"""The machine's pace (bench/speed_probe.py), which bench.million measures all along so that a
half-hour run can be compared with a short one run at another moment of the machine's day."""

import time

import pytest

from bench.million import Interval, SizedRun, matched_at_pace
from bench.resync import RunFigures
from bench.speed_probe import SpeedProbe


def test_a_running_probe_samples_the_cpu_time_of_its_work(tmp_path):
    started = time.time()
    with SpeedProbe(tmp_path / "pace.txt", every=0.1) as probe:
        deadline = time.monotonic() + 30
        while len(probe.samples(started, time.time())) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        process = probe._process
    assert process is not None and process.poll() is not None, "the probe outlived its context"
    samples = probe.samples(started, time.time())
    assert len(samples) >= 3
    # Microseconds per unit of a dict of 1,000 entries encoded and decoded: far above zero,
    # far below a second, whatever the machine.
    assert all(10 < cost < 1_000_000 for cost in samples)
    assert min(samples) <= probe.pace(started, time.time()) <= max(samples)


def test_the_pace_is_the_median_of_the_samples_in_the_window(tmp_path):
    probe = SpeedProbe(tmp_path / "pace.txt")
    probe.out.write_text("100.0 900.0\n101.0 1000.0\n102.0 5000.0\n103.0 1100.0\n200.0 10.0\n")

    assert probe.pace(100.0, 103.0) == 1050.0  # the 5,000 us of one sample barely moves it
    assert probe.pace(101.0, 102.5) == 3000.0
    assert probe.pace(150.0, 160.0) == 0.0  # no sample: no pace
    assert SpeedProbe(tmp_path / "missing.txt").pace(0.0, 1e12) == 0.0


def _sized(users_per_s: float, pace: float) -> SizedRun:
    sized = SizedRun("run", users=1000, pace=pace)
    sized.run = RunFigures(
        users=1000,
        seconds=1000 / users_per_s,
        done=1000,
        changed=1000,
        failed=0,
        skipped=0,
        worker_peak_rss={},
        fanout_peak_rss=0,
    )
    return sized


def test_the_large_run_compares_with_a_small_one_over_its_intervals_at_the_same_pace():
    small = _sized(500.0, pace=1000.0)
    small.run.cpu_seconds["machine"] = 3.0  # 3 ms per user
    large = _sized(450.0, pace=1500.0)
    large.intervals = [
        Interval(users_per_s=480.0, machine_ms_per_user=3.3, pace=1050.0),
        Interval(users_per_s=490.0, machine_ms_per_user=3.1, pace=960.0),
        # At another moment of the machine: left out.
        Interval(users_per_s=300.0, machine_ms_per_user=5.0, pace=1800.0),
        Interval(users_per_s=700.0, machine_ms_per_user=2.0, pace=0.0),
    ]

    count, rate, cost = matched_at_pace(large, small)

    assert count == 2
    assert rate == pytest.approx(485.0 / 500.0)
    assert cost == pytest.approx(3.2 / 3.0)
    assert matched_at_pace(large, _sized(500.0, pace=3000.0)) == (0, 0.0, 0.0)
