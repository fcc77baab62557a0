"""`python -m bench.client_cost` works: it asks the stub both ways and prints their CPU per
call. Only that it works: no speed is asserted here (figure 15h has the figures)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(client_cpu_[a-z0-9_]+)=(\d+(?:\.\d+)?)$", re.MULTILINE)


def test_client_cost_prints_both_ways_and_their_ratio(tmp_path):
    # Its own metrics directory: the bench writes its counts there, as a worker does.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    done = subprocess.run(
        [sys.executable, "-m", "bench.client_cost", "--calls", "20", "--rounds", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    figures = {name: float(value) for name, value in LINE.findall(done.stdout)}
    assert set(figures) == {
        "client_cpu_ms_per_call_main",
        "client_cpu_ms_per_call_urllib3",
        "client_cpu_ratio",
    }
    assert all(value > 0 for value in figures.values())
