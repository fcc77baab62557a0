# Two commands matter to a newcomer: `make run` (the service on the embedded default, no
# server needed) and `make test` (the whole suite against PostgreSQL and Redis).
# The newest supported Python on the PATH (pyproject.toml accepts 3.11 to 3.13), else python3.11;
# `make run PYTHON=/path/to/python3.12` picks one. A .venv made by another Python is rebuilt.
ifndef PYTHON
PYTHON := $(or $(firstword $(foreach p,python3.13 python3.12 python3.11,\
	$(if $(shell $(p) -c '' 2>/dev/null && echo yes),$(p)))),python3.11)
endif
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
# The Python the existing .venv was made by (empty when there is none).
VENV_VERSION := $(shell sed -n 's/^version *= *\([0-9]*\.[0-9]*\).*/\1/p' $(VENV)/pyvenv.cfg 2>/dev/null)
# Names of this checkout's own on shared servers: two checkouts (or CI jobs) on one server never
# meet. The database (pytest-django creates test_<name>, the benchmark smoke test
# <name>_bench_smoke and <name>_bench_million, the RabbitMQ tests the vhost <name>_test) and the prefix of every broker
# key on the Redis db; each test's cache keys have a prefix of the run's. The suite removes
# them all when it ends.
CHECKOUT_ID := $(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/messages_$(CHECKOUT_ID)
TEST_REDIS_URL ?= redis://127.0.0.1:6379/9
TEST_BROKER_KEY_PREFIX ?= messages-$(CHECKOUT_ID):
TEST_ENV = DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	CELERY_BROKER_KEY_PREFIX=$(TEST_BROKER_KEY_PREFIX)
PYTEST_ARGS ?=
# The suite runs in TEST_WORKERS pytest-xdist processes (conftest.py gives each its own names on
# the shared servers): more than the two cores, as its tests mostly wait (timeouts, worker
# subprocesses, private servers). Then the tests marked heavy (they saturate the CPU or measure
# a rate or a delay) run alone, one at a time. PYTEST_ARGS="-n 0": the first part in one process.
TEST_WORKERS ?= 4
# Where the embedded default keeps its files (the settings' DATA_DIR).
DATA_DIR ?= data
# The demo's periodic resync runs every two minutes, so a revocation shows quickly (set at the
# first migrate only: afterwards the schedule is edited in the Django admin).
DEMO_RESYNC_INTERVAL ?= 120

.PHONY: install install-dev run demo test test-slow lint bench bench-full lock clean clean-data

# The virtualenv, made by $(PYTHON): one made by another Python (its pyvenv.cfg says which) is
# removed first, so switching Pythons never reuses packages built for the old one. The marker
# names the Python: made anew, it is newer than the install stamps, so they are made again.
$(VENV)/.python-$(PYTHON_VERSION):
	@test -n "$(PYTHON_VERSION)" || { echo "$(PYTHON) not found: install Python 3.11, 3.12 or 3.13, or run make PYTHON=/path/to/python3.1x"; exit 1; }
	@if [ "$(VENV_VERSION)" != "$(PYTHON_VERSION)" ]; then \
		if [ -n "$(VENV_VERSION)" ]; then echo "$(VENV) was made by Python $(VENV_VERSION): rebuilding it with $(PYTHON) ($(PYTHON_VERSION))"; fi; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
	rm -f $(VENV)/.python-*
	touch $@

# Runtime dependencies only, from the lock file as the image installs them (Dockerfile), then
# the project itself: what `make run` needs.
$(BIN)/.runtime: requirements.lock pyproject.toml $(VENV)/.python-$(PYTHON_VERSION)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Plus the test, lint and lock tools (pyproject.toml's dev extra).
$(BIN)/.dev: $(BIN)/.runtime
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.runtime

install-dev: $(BIN)/.dev

run: install
	ENTITLEMENTS_RESYNC_INTERVAL_SECONDS=$(DEMO_RESYNC_INTERVAL) $(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py setup_demo
	@# The admin's CSS and JS, served by the web process itself (WhiteNoise).
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@# The file broker never removes fanout bindings: each run starts with a clean control folder.
	rm -rf "$(DATA_DIR)/broker/control"
	@# Every process of the run adds up its metrics in one directory, emptied before they start.
	PROMETHEUS_MULTIPROC_DIR="$(abspath $(DATA_DIR))/metrics" $(BIN)/python manage.py reset_metrics
	@# The Procfile's processes with data/demo.env (manage.py reads it), until Ctrl-C. The shell
	@# leaves Ctrl-C to run_demo, which stops every process and ends with 130: a normal stop.
	trap '' INT; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python manage.py run_demo || [ $$? -eq 130 ]

test: install-dev
	$(TEST_ENV) $(BIN)/ruff check .
	$(BIN)/mypy
	$(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) --maxschedchunk 1 --heavy=skip --durations=10 $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/python -m pytest --heavy=only --durations=10 $(PYTEST_ARGS)

test-slow: install-dev
	$(TEST_ENV) $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# Types of core/, worker/ and messages/ ([tool.mypy] in pyproject.toml).
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python -m bench --quick

bench-full: install-dev
	$(BIN)/python -m bench --full

# The image's (and `make run`'s) dependency tree, pinned with hashes from PyPI (not a local
# mirror's copies), build dependencies included. Run after changing pyproject.toml's
# dependencies, and commit requirements.lock with it.
lock: install-dev
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
		$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-build-deps \
		--strip-extras --no-emit-index-url \
		--output-file=requirements.lock pyproject.toml

# The virtualenv only: the demo's database, password and mapping file in data/ stay.
clean:
	rm -rf $(VENV)

# The demo's state (its SQLite database, superuser password, mapping file, broker and cache
# folders): the next `make run` starts a new demo.
clean-data:
	rm -rf "$(DATA_DIR)"
