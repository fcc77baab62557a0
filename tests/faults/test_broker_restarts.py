"""Restart the broker while a full run and logins are in progress, with the workers the
Procfile ships, started by honcho as `make run` starts them: each worker rides out every
restart (same process, reconnected), and nothing is lost: every run ends `done` with all its
users, every login gets its rights.

Redis is a private redis-server with an append-only file, as docker-compose.yml ships it.
RabbitMQ is a private node (never the shared server), stopped with `rabbitmqctl stop` and
started again on its data, so its durable queues are reloaded from disk as in production.

Before the fix (Celery 5.7 closes a lost connection twice; messages/redis_broker.py) the bulk
worker stopped with "Unrecoverable error: AttributeError('NoneType' object has no attribute
'hostname')" at the first Redis restart that found it with a task running and a free slot.
"""

import os
import signal
import statistics
import time
from functools import partial

import pytest

from core.entitlements import request_resync
from core.models import SyncRun, Trigger, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import (
    ALPHA,
    BETA,
    WORKER_DEFAULTS,
    broker_and_cache,
    synced_domains,
    until_sweeping,
)
from tests.faults.test_worker_kills import WHOLE_WORKER_SETTINGS
from tests.support import PrivateRedis, rabbitmq, wait_until, worker_environment
from tests.support.broker import producer_app
from tests.support.oidc_provider import FakeProvider
from tests.support.procfile import ProcfileProcesses

WORKERS = ("worker-interactive", "worker-bulk")
# Two batches of five for the bulk worker's three slots: while they run, the worker also
# waits on the broker for more, the state in which a lost connection stopped it.
RUN_USERS = 10
SETTINGS = {
    **WORKER_DEFAULTS,
    # A task cut off by the restart comes back after the visibility timeout (60 s here).
    **WHOLE_WORKER_SETTINGS,
    "ENTITLEMENTS_SYNC_BATCH_SIZE": 5,
    "ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS": 10,
}
LOGINS_PER_RESTART = 2


@pytest.fixture
def persistent_redis(tmp_path, settings):
    """A private Redis with an append-only file (compose's), as broker and cache."""
    server = PrivateRedis(tmp_path, persistent=True)
    server.start()
    with broker_and_cache(server, settings):
        yield server
    server.stop()


@pytest.fixture
def private_rabbitmq(shared_broker):
    """A private RabbitMQ node as broker; Redis stays the cache."""
    node = rabbitmq.PrivateRabbitMQ()
    try:
        node.start()
        with producer_app(node.url):
            yield node
    finally:
        node.remove()


def restart_redis(server: PrivateRedis) -> None:
    """Stop the broker, leave it down a second, start it again (its data kept)."""
    server.stop()
    time.sleep(1)
    server.start()


def ended_run() -> SyncRun | None:
    """The latest run, once no run is running any more."""
    if SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists():
        return None
    return SyncRun.objects.order_by("-pk").first()


def ride_out_restarts(*, restarts, restart, env, make_admins, upstream, settings, tmp_path):
    """`restarts` times: a full run and logins in flight, then `restart()`. Returns figures."""
    upstream.latency = 1.0
    users = make_admins(RUN_USERS, upstream_domains=(ALPHA, BETA))
    provider = FakeProvider(settings)
    processes = ProcfileProcesses(names=WORKERS, env=env, log_path=tmp_path / "honcho.log")
    processes.start()
    pids = {name: processes.worker_pid(name) for name in WORKERS}
    emails, recoveries = [], []
    try:
        for number in range(restarts):
            calls = upstream.calls
            request_resync(trigger=Trigger.ADMIN)
            wait_until(
                lambda calls=calls: upstream.calls > calls, timeout=60, message="the run's batches"
            )
            for index in range(LOGINS_PER_RESTART):
                email = f"login-{number}-{index}@example.org"
                upstream.set_admin_domains(email, [ALPHA, BETA])
                browser = provider.login({"sub": email, "email": email, "siret": ALPHA_SIRET})
                assert "_auth_user_id" in browser.session
                emails.append(email)

            restart()
            back_at = time.monotonic()

            for name in WORKERS:
                processes.wait_for(name, "Connected to", count=number + 2, timeout=60)
            assert processes.running(), processes.tail()
            assert {name: processes.worker_pid(name) for name in WORKERS} == pids, (
                "a worker stopped: " + processes.tail()
            )
            try:
                run = wait_until(
                    until_sweeping(ended_run),
                    timeout=150,
                    every=0.25,
                    message=f"run {number + 1} to end",
                )
            except AssertionError as timeout:
                # What a red CI needs to tell why: the run's counts and the workers' last lines.
                runs = list(SyncRun.objects.order_by("pk").values())
                raise AssertionError(f"{timeout}\nruns: {runs}\n{processes.tail()}") from None
            recoveries.append(time.monotonic() - back_at)
            # Everyone the run asked for (the run's admins, and the logins synced so far): done,
            # or skipped because their login's sync was running and serves them.
            assert (run.status, run.users_failed) == (SyncRun.Status.DONE, 0), run
            assert run.users_done + run.users_skipped == run.users_enqueued >= RUN_USERS, run
        logged_in = list(User.objects.filter(email__in=emails))
        wait_until(
            until_sweeping(lambda: all(synced_domains(u) == {ALPHA, BETA} for u in logged_in)),
            timeout=120,
            every=0.25,
            message="every login's rights",
        )
    finally:
        processes.stop()
    assert len(logged_in) == len(emails)
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
    crashes = "\n".join(processes.lines("worker-bulk") + processes.lines("worker-interactive"))
    assert "Unrecoverable error" not in crashes
    return {
        "restarts": restarts,
        "runs": SyncRun.objects.filter(status=SyncRun.Status.DONE).count(),
        "logins": len(emails),
        "median_recovery": statistics.median(recoveries),
        "max_recovery": max(recoveries),
    }


def report(report_figure, broker: str, figures: dict) -> None:
    report_figure(
        f"faults/broker restarts ({broker}): {figures['restarts']} restarts during runs and "
        f"logins, Procfile workers under honcho: 2/2 workers kept their process, "
        f"{figures['runs']}/{figures['restarts']} runs done with every user they asked for, "
        f"{figures['logins']}/{figures['logins']} logins with their rights; each run ended "
        f"{figures['median_recovery']:.0f} s (median, max {figures['max_recovery']:.0f} s) "
        "after the broker came back"
    )


def redis_restarts(restarts, make_admins, upstream, persistent_redis, settings, tmp_path):
    env = worker_environment(redis_url=persistent_redis.url, data_dir=tmp_path, **SETTINGS)
    return ride_out_restarts(
        restarts=restarts,
        restart=partial(restart_redis, persistent_redis),
        env=env,
        make_admins=make_admins,
        upstream=upstream,
        settings=settings,
        tmp_path=tmp_path,
    )


def rabbitmq_restarts(
    restarts, make_admins, upstream, private_rabbitmq, shared_broker, settings, tmp_path
):
    env = worker_environment(
        redis_url=shared_broker,
        data_dir=tmp_path,
        CELERY_BROKER_URL=private_rabbitmq.url,
        **SETTINGS,
    )
    return ride_out_restarts(
        restarts=restarts,
        restart=private_rabbitmq.restart,
        env=env,
        make_admins=make_admins,
        upstream=upstream,
        settings=settings,
        tmp_path=tmp_path,
    )


@pytest.mark.long
def test_workers_ride_out_a_redis_restart(
    make_admins, upstream, persistent_redis, settings, tmp_path, report_figure
):
    figures = redis_restarts(1, make_admins, upstream, persistent_redis, settings, tmp_path)
    report(report_figure, "Redis", figures)


@pytest.mark.slow
def test_workers_ride_out_ten_redis_restarts(
    make_admins, upstream, persistent_redis, settings, tmp_path, report_figure
):
    figures = redis_restarts(10, make_admins, upstream, persistent_redis, settings, tmp_path)
    report(report_figure, "Redis", figures)


@pytest.mark.long
@pytest.mark.rabbitmq
def test_workers_ride_out_a_rabbitmq_restart(
    make_admins, upstream, private_rabbitmq, shared_broker, settings, tmp_path, report_figure
):
    figures = rabbitmq_restarts(
        1, make_admins, upstream, private_rabbitmq, shared_broker, settings, tmp_path
    )
    report(report_figure, "RabbitMQ", figures)


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_workers_ride_out_ten_rabbitmq_restarts(
    make_admins, upstream, private_rabbitmq, shared_broker, settings, tmp_path, report_figure
):
    figures = rabbitmq_restarts(
        10, make_admins, upstream, private_rabbitmq, shared_broker, settings, tmp_path
    )
    report(report_figure, "RabbitMQ", figures)


@pytest.mark.long
def test_make_run_starts_a_dead_worker_again(shared_broker, transactional_db, settings, tmp_path):
    env = worker_environment(redis_url=shared_broker, data_dir=tmp_path, **WORKER_DEFAULTS)
    processes = ProcfileProcesses(names=WORKERS, env=env, log_path=tmp_path / "honcho.log")
    processes.start()
    try:
        dead = processes.worker_pid("worker-bulk")
        os.kill(dead, signal.SIGKILL)

        processes.wait_for("worker-bulk", "ready.", count=2, timeout=120)
        assert processes.running(), "honcho must not stop everything for one dead worker"
        assert processes.worker_pid("worker-bulk") not in (None, dead)
        assert processes.count("worker-bulk", "starting it again") == 1
    finally:
        processes.stop()
    # Ctrl-C still stops everything at once, the respawned worker included.
    assert "SIGKILL" not in processes.tail(), processes.tail()
