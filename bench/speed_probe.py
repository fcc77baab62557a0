"""The machine's pace while a benchmark runs: the CPU time of a fixed piece of Python work.

These machines' speed moves by up to 2x from one day to the next, and by a fifth within ten
minutes (the same 10,000-user run cost its workers 2.07 then 2.50 ms of CPU per user eight
minutes apart, 2026-12-03): the CPU time of identical work moves with it, which is why a run
compared with another must be run side by side. A run of half an hour cannot be: the probe
measures the pace all along instead. Every `--every` seconds it times the same work (building
and encoding a dict, as much interpreted Python as the workers run) on its own CPU clock, so
waiting for a core does not count, only how fast the core runs it; a run's pace is the median
of the samples taken while it ran, and figures of runs at different paces compare once divided
by it. It costs about 1 % of one core.

    python -m bench.speed_probe --out samples.txt   # "<unix time> <CPU microseconds per unit>"
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Units timed per sample: about 20 ms of CPU on these machines.
_UNITS_PER_SAMPLE = 8


def work_unit() -> int:
    """One unit of the fixed work: a dict of 1,000 entries built, encoded and decoded."""
    entries = {f"user-{n}": [n, n * 2, f"d{n % 1000}"] for n in range(1000)}
    return len(json.loads(json.dumps(entries)))


def sample() -> float:
    """CPU microseconds per unit, on this thread's clock."""
    start = time.thread_time_ns()
    for _ in range(_UNITS_PER_SAMPLE):
        work_unit()
    return (time.thread_time_ns() - start) / 1000 / _UNITS_PER_SAMPLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed_probe", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="file the samples are added to")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args(argv)
    work_unit()  # warm: the first unit pays for imports and allocations
    with args.out.open("a", buffering=1) as out:
        while True:
            out.write(f"{time.time():.3f} {sample():.1f}\n")
            time.sleep(args.every)


class SpeedProbe:
    """The probe in a child process for as long as the context lasts."""

    def __init__(self, out: Path, *, every: float = 2.0) -> None:
        self.out = out
        self.every = every
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "SpeedProbe":
        self.out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.speed_probe", "--out", str(self.out)]
        self._process = subprocess.Popen([*command, "--every", str(self.every)])
        return self

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def samples(self, start: float, end: float) -> list[float]:
        """The samples (CPU microseconds per unit) taken between two unix times."""
        if not self.out.exists():
            return []
        taken = []
        for line in self.out.read_text().splitlines():
            at, cost = line.split()
            if start <= float(at) <= end:
                taken.append(float(cost))
        return taken

    def pace(self, start: float, end: float) -> float:
        """The median CPU microseconds per unit between two unix times (0.0: no sample)."""
        taken = self.samples(start, end)
        return statistics.median(taken) if taken else 0.0


if __name__ == "__main__":
    sys.exit(main())
