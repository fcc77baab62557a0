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

.PHONY: install run demo test test-slow lint bench bench-full clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	ENTITLEMENTS_RESYNC_INTERVAL=$(DEMO_RESYNC_INTERVAL) $(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py setup_demo
	@# The admin's CSS and JS, served by the web process itself (WhiteNoise).
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@# The file broker never removes fanout bindings: each run starts with a clean control folder.
	rm -rf "$(DATA_DIR)/broker/control"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile -e "$(abspath $(DATA_DIR))/demo.env"

test: install
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/ruff check .
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench --quick

bench-full: install
	$(BIN)/python -m bench --full

clean:
	rm -rf $(VENV) data
