# Two commands matter to a newcomer: `make run` (the service on the embedded default, no
# server needed) and `make test` (the whole suite against PostgreSQL and Redis).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The suite's own database (pytest-django creates test_<name>) and Redis db number, so it
# never touches anybody else's data on shared servers.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/messages_ci
TEST_REDIS_URL ?= redis://127.0.0.1:6379/9
PYTEST_ARGS ?=
# Where the embedded default keeps its files (the settings' DATA_DIR).
DATA_DIR ?= data
# The demo's periodic resync runs every two minutes, so a revocation shows quickly (set at the
# first migrate only: afterwards the schedule is edited in the Django admin).
DEMO_RESYNC_INTERVAL ?= 120

.PHONY: install install-dev run demo test test-slow lint bench bench-full lock clean

# Runtime dependencies only, from the lock file as the image installs them (Dockerfile), then
# the project itself: what `make run` needs.
$(BIN)/.runtime: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
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
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile -e "$(abspath $(DATA_DIR))/demo.env"

test: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/ruff check .
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

clean:
	rm -rf $(VENV) data
