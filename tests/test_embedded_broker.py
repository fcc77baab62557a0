"""The embedded default's broker never shows a process a half-written file: processes binding
to the same new fanout exchange at once (as web, worker, beat, Flower and `celery inspect` do
at start-up) all keep their binding and never read a broken table, and a consumer never takes
a message its producer is still writing."""

import multiprocessing
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from queue import Empty

from kombu import Connection, Exchange, Producer, Queue

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# BROKER_RACE_TRANSPORT=kombu.transport.filesystem:Transport shows kombu's own failing.
TRANSPORT = os.environ.get("BROKER_RACE_TRANSPORT", "messages.embedded_broker:Transport")
PROCESSES = 4
ROUNDS = 50
# Large enough that writing one takes a while, so a consumer polling the folder meets files
# still being written.
BIG_MESSAGE = "x" * 1_000_000
BIG_MESSAGES_PER_PRODUCER = 20

# Fork: the children need nothing but this module's functions and the folder's path.
_fork = multiprocessing.get_context("fork")


@contextmanager
def _running(processes):
    """Start `processes`; whatever happens, none outlives the block."""
    for process in processes:
        process.start()
    try:
        yield
    finally:
        for process in processes:
            process.join(timeout=120)
            if process.is_alive():
                process.kill()
                process.join()


def _connection(folder: str) -> Connection:
    return Connection(
        "filesystem://localhost//",
        transport=TRANSPORT,
        transport_options={
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": os.path.join(folder, "control"),
        },
    )


def _bind_and_publish(folder, number, barrier, errors):
    """Each round, with every other process: bind a queue to a new fanout exchange, publish."""
    channel = _connection(folder).default_channel
    producer = Producer(channel)
    for round_ in range(ROUNDS):
        exchange = Exchange(f"race{round_}", "fanout")
        barrier.wait(timeout=60)
        try:
            Queue(f"process{number}.round{round_}", exchange)(channel).declare()
            # A fanout publish reads the exchange's table.
            producer.publish({"round": round_}, exchange=exchange)
        except Exception as error:  # every failure is the finding
            errors.put(f"process {number}, round {round_}: {error!r}")


def test_processes_binding_at_once_keep_every_binding_and_a_readable_table(tmp_path):
    folder = str(tmp_path)
    barrier = _fork.Barrier(PROCESSES)
    errors = _fork.Queue()
    processes = [
        _fork.Process(target=_bind_and_publish, args=(folder, number, barrier, errors))
        for number in range(PROCESSES)
    ]
    with _running(processes):
        pass
    failures = []
    while not errors.empty():
        failures.append(errors.get())

    assert [process.exitcode for process in processes] == [0] * PROCESSES
    assert failures == []
    channel = _connection(folder).default_channel
    for round_ in range(ROUNDS):
        bound = {binding.queue for binding in channel.get_table(f"race{round_}")}
        assert bound == {f"process{number}.round{round_}" for number in range(PROCESSES)}


def _publish_big_messages(folder):
    channel = _connection(folder).default_channel
    for number in range(BIG_MESSAGES_PER_PRODUCER):
        channel._put("big", {"number": number, "body": BIG_MESSAGE})


def test_a_consumer_never_takes_a_message_being_written(tmp_path):
    folder = str(tmp_path)
    producers = [_fork.Process(target=_publish_big_messages, args=(folder,)) for _ in range(2)]
    with _running(producers):
        channel = _connection(folder).default_channel
        received = []
        deadline = time.monotonic() + 120
        # The consumer's side of kombu's polling: take whatever the folder holds.
        while len(received) < 2 * BIG_MESSAGES_PER_PRODUCER:
            try:
                received.append(channel._get("big"))
            except Empty:
                assert time.monotonic() < deadline, f"only {len(received)} messages arrived"
                time.sleep(0.01)

    assert all(message["body"] == BIG_MESSAGE for message in received)
    assert sorted(message["number"] for message in received) == sorted(
        list(range(BIG_MESSAGES_PER_PRODUCER)) * 2
    )


def test_unbinding_a_queue_leaves_the_others(tmp_path):
    channel = _connection(str(tmp_path)).default_channel
    exchange = Exchange("events", "fanout")
    kept, removed = (Queue(name, exchange)(channel) for name in ("kept", "removed"))
    kept.declare()
    removed.declare()

    removed.delete()

    assert [binding.queue for binding in channel.get_table("events")] == ["kept"]


def test_the_embedded_default_uses_this_transport(tmp_path):
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"REDIS_URL", "CELERY_BROKER_URL"}
    }
    environment.update(DATA_DIR=str(tmp_path), DJANGO_SECRET_KEY="test-secret")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from messages import celery_app; print(type(celery_app.connection().transport))",
        ],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "messages.embedded_broker.Transport" in result.stdout
