"""Root pytest configuration: Celery's classic in-process fixtures (pytest-celery's Docker
fixtures cannot run here), and each pytest-xdist worker's own broker keys.

`make test` runs the suite in several pytest-xdist workers (gw0, gw1...). Each worker gets its own
names on the shared servers, so no worker ever sees another's data:
- the test database: pytest-django suffixes it (test_messages_<id>_gw0), and every name the
  tests derive from it follows (the RabbitMQ vhosts, the benchmark smoke test's database);
- the broker keys on the Redis db: the run's CELERY_BROKER_KEY_PREFIX plus `gw0:`, set below in
  the settings and in the environment the tests' subprocesses (celery workers, manage.py) inherit;
- the cache keys: a prefix of the worker's own per test (tests/conftest.py);
- servers a test starts (Redis, RabbitMQ nodes, Flower, stubs) listen on free ports, and files
  go to pytest's tmp_path, which xdist gives each worker apart.
Each worker removes what it made when its session ends (tests/conftest.py).

Rules for a new test, so it can run beside the others:
- name what it makes on a shared server after the run: the database's name through
  tests.support.names.own_name, Redis keys through tests.support.broker.broker_key or under the
  test's cache KEY_PREFIX; listen on a free port (bind to port 0), write under tmp_path;
- one that saturates the CPU or measures a rate or a delay (a benchmark's smoke run, a storm, a
  rate limit) is marked `heavy`: `make test` runs those apart, one at a time, once the others
  are done (`--heavy=skip` in the parallel run, then `--heavy=only` in one process);
- one that takes 10 s or more is marked `long`: the long tests are handed out first, one at a
  time (the Makefile's --maxschedchunk), so the parallel part does not end with one worker busy
  on a long test while the others wait;
- figures (tests/figures.py) and artefacts (tests/artifacts.py) reach pytest's summary from
  every worker by themselves.
`make test PYTEST_ARGS="-n 0"` runs the parallel part in one process.
"""

import os
from urllib.parse import urlsplit

import pytest
from django.conf import settings

pytest_plugins = ("celery.contrib.pytest",)

# pytest-django has read the settings before any conftest is imported, but nothing has used the
# broker's options yet: Celery reads them from this same dict when it first connects.
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _xdist_worker and urlsplit(settings.CELERY_BROKER_URL).scheme in {"redis", "rediss"}:
    _options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    _options["global_keyprefix"] = f"{_options.get('global_keyprefix', '')}{_xdist_worker}:"
    os.environ["CELERY_BROKER_KEY_PREFIX"] = _options["global_keyprefix"]


def pytest_addoption(parser):
    parser.addoption(
        "--heavy",
        choices=("with-others", "skip", "only"),
        default="with-others",
        help="the tests marked heavy: run with the others (default), left out, or alone",
    )


def pytest_collection_modifyitems(config, items):
    """--heavy=skip leaves the heavy tests out, --heavy=only keeps only them (after `-m`); the
    tests marked `long` go first, in their order (the longest first makes the shortest end)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    choice = config.getoption("heavy")
    if choice == "with-others":
        return
    keep = choice == "only"
    selected, deselected = [], []
    for item in items:
        heavy = item.get_closest_marker("heavy") is not None
        (selected if heavy == keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_sessionfinish(session, exitstatus):
    """Either part of `make test` finding nothing to run among the tests selected is not a
    failure: `make test PYTEST_ARGS=tests/test_layers.py` has no heavy test for the second part,
    and `make test PYTEST_ARGS=tests/test_change_signals_e2e.py` nothing but heavy ones."""
    if (
        session.config.getoption("heavy") in ("skip", "only")
        and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED
    ):
        session.exitstatus = pytest.ExitCode.OK
