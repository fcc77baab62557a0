"""The figures: printed as `name=value` lines when measured, then written into the docs."""

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import celery
import django
import psutil
from django.db import connection

from bench.modes import Mode
from bench.services import REPO

COMMANDS = {
    "smoke": "python -m bench --smoke",
    "quick": "make bench   # = python -m bench --quick",
    "full": "make bench-full   # = python -m bench --full",
}


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile (0..1) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no value to take a percentile of")
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def machine_description() -> dict:
    """What the figures ran on, for the docs."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "software": (
            f"Python {platform.python_version()}, Django {django.get_version()}, "
            f"Celery {celery.__version__}, PostgreSQL {postgres}, "
            f"{' '.join(redis_version[:3]) if redis_version else 'redis-server'}"
        ),
        "commit": commit,
    }


class Figures:
    """Every figure of one benchmark run, in the order measured."""

    def __init__(self, *, mode: Mode):
        self.mode = mode
        self.values: dict[str, float | int] = {}
        self.context: dict = {}
        self.runs: dict[str, dict] = {}

    def add(self, name: str, value) -> None:
        """Record a figure and print its line at once."""
        self.values[name] = round(value, 3) if isinstance(value, float) else value
        print(f"{name}={_format(self.values[name])}", flush=True)

    note = add

    def add_all(self, figures: dict) -> None:
        for name, value in figures.items():
            self.add(name, value)

    def add_percentiles(self, prefix: str, suffix: str, values: list[float]) -> None:
        """`<prefix>_p50_<suffix>` and `<prefix>_p99_<suffix>`."""
        self.add(f"{prefix}_p50_{suffix}", percentile(values, 0.50))
        self.add(f"{prefix}_p99_{suffix}", percentile(values, 0.99))

    def add_run(self, label: str, run, *, bulk: str) -> None:
        """The detail of one full run: its figures and where the CPU went."""
        self.runs[label] = {
            "users": run.users,
            "seconds": round(run.seconds, 2),
            "users_per_s": round(run.users_per_s, 1),
            "changed": run.changed,
            "failed": run.failed + run.skipped,
            "bulk_worker_peak_rss_mb": round(run.worker_peak_rss[bulk] / 2**20, 1),
            "fanout_peak_rss_mb": round(run.fanout_peak_rss / 2**20, 1),
            "machine_cpu_percent": round(run.machine_cpu_percent, 1),
            "cpu_seconds": {name: round(value, 1) for name, value in run.cpu_seconds.items()},
        }
        for name in ("users", "seconds", "users_per_s"):
            self.add(f"run_{label}_{name}", getattr(run, name))
        self.add(f"run_{label}_machine_cpu_percent", run.machine_cpu_percent)
        for name, seconds in run.cpu_seconds.items():
            # CPU milliseconds per user, by part: where the time goes.
            self.add(f"run_{label}_cpu_ms_per_user_{name}", seconds * 1000 / max(run.users, 1))

    def save(self, path: Path) -> Path:
        """Every line, as printed, into `path`."""
        path.write_text(
            "".join(f"{name}={_format(value)}\n" for name, value in self.values.items())
        )
        return path

    def write_docs(self, path: Path) -> None:
        """Replace this mode's section of the performance doc with these figures."""
        self.context["load_at_end"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
        begin = f"<!-- bench:{self.mode.name}:begin -->"
        end = f"<!-- bench:{self.mode.name}:end -->"
        section = f"{begin}\n{self.markdown()}\n{end}"
        text = path.read_text() if path.exists() else "# Performance\n"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _match: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        path.write_text(text)

    # --- Markdown ---------------------------------------------------------------------------

    def markdown(self) -> str:
        v = self.values
        context = self.context
        today = datetime.date.today().isoformat()
        lines = [
            f"### Figures of the {self.mode.name} mode ({today})",
            "",
            f"- Command: `{COMMANDS[self.mode.name]}`, {v.get('bench_seconds', '?')} s in all",
            f"- Machine: {context.get('cpu')}, {context.get('memory')} RAM; load average "
            f"(1, 5, 15 min) {context.get('load_at_start')} at start, "
            f"{context.get('load_at_end')} at end",
            f"- Software: {context.get('software')}; commit {context.get('commit')}",
            f"- Settings: {_settings_text(context.get('settings', {}))}",
            "",
            "**1. Login overhead** (ms the post-login step takes; upstream = stub latency)",
            "",
            "| upstream | async p50 | async p99 | inline p50 (seed design) | inline p99 "
            "| inline logins | target: async p99 ≤ 3 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for latency in (25, 2000):
            p99 = v.get(f"login_overhead_p99_ms_async_{latency}")
            lines.append(
                f"| {latency} ms | {_n(v.get(f'login_overhead_p50_ms_async_{latency}'))} "
                f"| {_n(p99)} "
                f"| {_n(v.get(f'login_overhead_p50_ms_inline_{latency}'))} "
                f"| {_n(v.get(f'login_overhead_p99_ms_inline_{latency}'))} "
                f"| {_n(v.get(f'login_overhead_inline_{latency}_logins'))} "
                f"| {_met(p99 is not None and p99 <= 3)} |"
            )
        lines += [
            "",
            f"Async: {self.mode.logins} logins at each latency. Inline at 2 s: "
            f"{_n(v.get('login_overhead_inline_2000_logins'))} logins, "
            f"{self.mode.inline_threads} at a time.",
            "",
            "**2. Login to rights** (ms from the end of the login step to the access committed; "
            "upstream 25 ms idle, 20 ms during the full run)",
            "",
            "| queue | p50 | p99 | target | met |",
            "|---|---|---|---|---|",
            _rights_row(v, "idle (nothing else queued)", "ms_idle", 125),
            _rights_row(v, "during a full run, the shipped workers (Procfile)", "ms_fullrun", 1000),
            _rights_row(v, "during a full run, one shared worker", "ms_fullrun_shared", 1000),
            "",
            "**3. Queries per user sync**",
            "",
            "| entitled domains | first sync (grants all) | second sync (unchanged) |",
            "|---|---|---|",
        ]
        for count in (1, 50, 500):
            lines.append(
                f"| {count} | {_n(v.get(f'queries_per_sync_{count}'))} "
                f"| {_n(v.get(f'queries_per_sync_unchanged_{count}'))} |"
            )
        counts = {v.get(f"queries_per_sync_{count}") for count in (1, 50, 500)}
        lines += [
            "",
            f"Target, the same small count whatever the number of domains: "
            f"{_met(len(counts) == 1)}.",
            "",
            "**4-5. Full resync** (stub at 20 ms; from the task's start to the last bookkeeping "
            "row; baseline: no-op tasks through the same broker, worker and result backend)",
            "",
            "| run | users | seconds | users/s | changed | failed | machine CPU % "
            "| CPU s: workers / postgres / stub / redis / bench |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, title in (
            ("changed", "every answer changed (+1 -1 each)"),
            ("unchanged", "nothing changed"),
            ("small", f"first sync, {self.mode.small_users:,} users"),
        ):
            run = self.runs.get(label)
            if not run:
                continue
            cpu = run["cpu_seconds"]
            lines.append(
                f"| {title} | {run['users']} | {_n(run['seconds'])} | {_n(run['users_per_s'])} "
                f"| {run['changed']} | {run['failed']} | {run['machine_cpu_percent']} "
                f"| {cpu.get('workers')} / {cpu.get('postgres')} / {cpu.get('stub')} / "
                f"{cpu.get('redis')} / {cpu.get('bench')} |"
            )
        rate = v.get("full_resync_users_per_s", 0)
        lines += [
            "",
            f"- No-op baseline: {_n(v.get('noop_tasks_per_s'))} tasks/s; the full resync runs at "
            f"{_n(v.get('full_resync_ratio_to_noop'))}x that (users per second over tasks per "
            "second: a batch task carries many users).",
            f"- Target 100,000 users in 5 min (≥ 333 users/s): {_n(rate)} users/s over "
            f"{_n(v.get('full_resync_users'))} users, {_met(rate >= 333)}.",
            f"- One shared worker (`-Q interactive,bulk`) instead: "
            f"{_n(v.get('full_resync_users_per_s_shared'))} users/s.",
            f"- Unchanged run: {_n(v.get('unchanged_run_access_writes'))} access rows written "
            f"(target 0: {_met(v.get('unchanged_run_access_writes') == 0)}), costing "
            f"{_n(v.get('unchanged_run_cost_ratio'))} of the changed run's time.",
            "",
            "**6. Memory** (peak RSS, MB: bulk worker = main process + pool children)",
            "",
            f"| | {self.mode.small_users:,} users | {self.mode.users:,} users | ratio "
            "| target ≤ 1.2 |",
            "|---|---|---|---|---|",
        ]
        small = self.runs.get("small", {}).get("users", self.mode.small_users)
        for name, title in (("worker", "bulk worker"), ("fanout", "fan-out task's process")):
            ratio = v.get(f"peak_rss_ratio_{name}")
            lines.append(
                f"| {title} | {_n(v.get(f'peak_rss_mb_{name}_{small}'))} "
                f"| {_n(v.get(f'peak_rss_mb_{name}'))} | {_n(ratio)} "
                f"| {_met(ratio is not None and ratio <= 1.2)} |"
            )
        queued = v.get("storm_queued_syncs")
        storm_p99 = v.get("storm_login_overhead_p99_ms")
        lines += [
            "",
            f"**7. Enqueue storm**: {_n(v.get('storm_logins'))} logins of "
            f"{_n(v.get('storm_users'))} users in {_n(v.get('storm_seconds'))} s queued "
            f"{queued} syncs (target ≤ 100: "
            f"{_met(queued is not None and queued <= 100)}); login step p50 "
            f"{_n(v.get('storm_login_overhead_p50_ms'))} ms, p99 {_n(storm_p99)} ms "
            "(target ≤ 3 ms: "
            f"{_met(storm_p99 is not None and storm_p99 <= 3)}).",
            "",
            f"**8. Metrics cost** (one login sync, stub without latency, PostgreSQL and Redis; "
            f"{self.mode.metrics_syncs} syncs with the Prometheus metrics on and as many off, "
            "alternated in one run, multiprocess mode): median "
            f"{_n(v.get('metrics_sync_ms_on'))} ms on, {_n(v.get('metrics_sync_ms_off'))} ms "
            f"off, {_n(v.get('metrics_overhead_percent'))} % (target < 5 %: "
            f"{_met(v.get('metrics_overhead_percent', 100) < 5)}); the recording calls alone "
            f"take {_n(v.get('metrics_calls_us_per_sync'))} µs per sync, "
            f"{_n(v.get('metrics_calls_percent_of_sync'))} % of it.",
            "",
            "**9. Large malformed answers** (the DeployCenter client reading and classifying "
            "each large body of tests/entitlements/malformed_answers.py from a stub in the "
            "benchmark's process; the test asserts their classes and memory, never a time): "
            + ", ".join(
                f"{name.removeprefix('bad_input_').removesuffix('_ms')} {_n(value)} ms"
                for name, value in v.items()
                if name.startswith("bad_input_")
            )
            + ".",
            "",
            "<details><summary>Every line the command printed</summary>",
            "",
            "```",
            *(f"{name}={_format(value)}" for name, value in self.values.items()),
            "```",
            "",
            "</details>",
        ]
        return "\n".join(lines)


def _n(value) -> str:
    """A figure as the tables show it: two decimals, one from 100 up."""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return "n/a" if value is None else str(value)


def _met(condition: bool) -> str:
    return "met" if condition else "**not met**"


def _rights_row(values: dict, title: str, suffix: str, target_ms: int) -> str:
    p99 = values.get(f"login_to_rights_p99_{suffix}")
    return (
        f"| {title} | {_n(values.get(f'login_to_rights_p50_{suffix}'))} | {_n(p99)} "
        f"| p99 ≤ {target_ms} ms | {_met(p99 is not None and p99 <= target_ms)} |"
    )


def _settings_text(settings: dict) -> str:
    layouts = settings.get("layouts", {})
    parts = [f"{name}={value}" for name, value in settings.items() if name != "layouts"]
    parts += [f"{name} workers: {'; '.join(specs)}" for name, specs in layouts.items()]
    return ", ".join(parts)
