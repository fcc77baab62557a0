"""`python -m bench --smoke | --quick | --full`: start the real parts, measure, print, document."""

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.layout import WorkerSpec, shipped_workers
from bench.modes import DEFAULT_PARTS, MODES, PARTS
from bench.report import Figures
from bench.services import (
    CHANGES_TOKEN,
    REPO,
    BenchSetupError,
    PrivateRedis,
    StubProcess,
    ensure_database,
    set_up_bench_process,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/messages_bench"
LOG_DIR = REPO / "bench" / "results"
# The upstream rate limit is an operator's setting (default 50/s, which alone would cap a
# full run at 50 users/s): the benchmark sets it to what a DeployCenter taking 1,000/s allows.
RATE_LIMIT_PER_SECOND = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    for name, mode in MODES.items():
        size.add_argument(
            f"--{name}",
            dest="mode",
            action="store_const",
            const=name,
            help=f"{mode.users:,} users in the largest full resync",
        )
    parser.set_defaults(mode="quick")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database to use and empty; its name must contain 'bench' "
        "(env BENCH_DATABASE_URL)",
    )
    # The workers are the Procfile's: these set the variables its worker lines read.
    parser.add_argument(
        "--bulk-concurrency",
        type=int,
        default=None,
        help="prefork children of the bulk worker (BULK_WORKER_CONCURRENCY, default: Procfile's)",
    )
    parser.add_argument(
        "--interactive-concurrency",
        type=int,
        default=None,
        help="prefork children of the interactive worker (INTERACTIVE_WORKER_CONCURRENCY, "
        "default: Procfile's)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="users per bulk message")
    parser.add_argument(
        "--batch-threads", type=int, default=None, help="upstream calls in flight per batch"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(PARTS),
        help="run only this part (repeatable); the docs are then not written. "
        "'pacing' (figure 13) runs only when asked, except in smoke mode",
    )
    parser.add_argument(
        "--docs",
        default=None,
        help="Markdown file to write the figures into (default: docs/performance.md, "
        "not in smoke mode)",
    )
    return parser.parse_args(argv)


def worker_layouts(args: argparse.Namespace) -> dict[str, list[WorkerSpec]]:
    """The layouts measured: "split", the Procfile's workers (what `make run` and
    docker-compose.yml run), and "shared", one worker on both queues with as many processes as
    the bulk worker, for comparison. The concurrency options set the Procfile's variables.
    Call it once Django is set up (worker.queues needs it)."""
    from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

    environ = dict(os.environ)
    if args.interactive_concurrency is not None:
        environ["INTERACTIVE_WORKER_CONCURRENCY"] = str(args.interactive_concurrency)
    if args.bulk_concurrency is not None:
        environ["BULK_WORKER_CONCURRENCY"] = str(args.bulk_concurrency)
    shipped = shipped_workers(environ=environ)
    bulk = next(spec for spec in shipped if BULK_QUEUE in spec.queues)
    return {
        "split": shipped,
        "shared": [WorkerSpec("shared", (INTERACTIVE_QUEUE, BULK_QUEUE), bulk.concurrency)],
    }


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark of the mode and print one name=value line per figure."""
    args = parse_args(argv)
    mode = MODES[args.mode]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    figures = Figures(mode=mode)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            redis_server = PrivateRedis(scratch)
            stack.callback(redis_server.stop)
            stub = StubProcess(log=LOG_DIR / "stub.log")
            stack.callback(stub.stop)
            ensure_database(args.database_url)
            tuning = {
                "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
                "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": str(RATE_LIMIT_PER_SECOND),
                # The changed run revokes one access of every user on purpose: the
                # revocation budget (default 10% per run) would hold nine in ten of them.
                "ENTITLEMENTS_MAX_REVOKE_SHARE": "1",
                # Figure 9 sends change signals to the web it starts.
                "ENTITLEMENTS_CHANGES_TOKEN": CHANGES_TOKEN,
            }
            if mode.change_recheck_seconds is not None:
                tuning["ENTITLEMENTS_CHANGE_RECHECK_SECONDS"] = str(mode.change_recheck_seconds)
            if args.batch_size:
                tuning["ENTITLEMENTS_SYNC_BATCH_SIZE"] = str(args.batch_size)
            if args.batch_threads:
                tuning["ENTITLEMENTS_SYNC_BATCH_CONCURRENCY"] = str(args.batch_threads)
            worker_env = set_up_bench_process(
                database_url=args.database_url,
                redis_url=redis_server.url,
                stub=stub,
                scratch=scratch,
                extra=tuning,
            )
            from bench.scenarios import run_all

            run_all(
                mode=mode,
                figures=figures,
                stub=stub,
                redis_server=redis_server,
                worker_env=worker_env,
                log_dir=LOG_DIR,
                layouts=worker_layouts(args),
                tuning=tuning,
                parts=frozenset(args.only or (PARTS if mode.paces_by_default else DEFAULT_PARTS)),
            )
    except BenchSetupError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    figures.note("bench_seconds", round(time.monotonic() - started, 1))
    docs = args.docs or (
        str(REPO / "docs" / "performance.md") if mode.writes_docs and not args.only else None
    )
    if docs:
        figures.write_docs(Path(docs))
    shutil.copy(figures.save(LOG_DIR / f"{mode.name}.txt"), LOG_DIR / "last.txt")
    return 0
