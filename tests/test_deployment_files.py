"""docker-compose.yml, env.example, the Dockerfile and requirements.lock match the Procfile, the
settings and pyproject.toml (no Docker here, so the files are parsed and their environment is run
through the settings)."""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from bench.cli import parse_args, worker_layouts
from bench.layout import RESPAWN, expand, procfile_processes, shipped_workers, worker_spec
from tests.test_settings_validation import start_django
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE, SIGNALS_QUEUE

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("worker-interactive", "worker-bulk", "worker-signals")
# Every worker below the web process (niceness 0), so a request preempts the syncs on a shared
# host; the bulk worker below the one-user syncs (docs/performance.md, figure 15m).
WORKER_NICENESS = {"worker-interactive": 5, "worker-bulk": 10, "worker-signals": 5}
APP_SERVICES = ("web", *WORKERS, "beat", "flower", "migrate")
# Read by something other than messages/settings.py: the postgres and rabbitmq images, compose
# itself (ports, profiles) and the Procfile's commands.
EXTERNAL_VARIABLES = {
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "RABBITMQ_PASSWORD",
    "COMPOSE_PROFILES",
    "WEB_ADDRESS",
    "WEB_PORT",
    "FLOWER_ADDRESS",
    "FLOWER_PORT",
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "INTERACTIVE_WORKER_CONCURRENCY",
    "SIGNALS_WORKER_CONCURRENCY",
    "BULK_WORKER_CONCURRENCY",
}
# Compose refuses to start without these (`${NAME:?message}`): nothing secret has a default, and
# the entitlements backend is a choice (the local demo backend would silently grant nothing).
REQUIRED = {"DJANGO_SECRET_KEY", "ENTITLEMENTS_BACKEND", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"}
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# `NAME=value` or `# NAME=value` (a documented default) in env.example.
_EXAMPLE_LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
# env_str("NAME", ...), the name possibly on the next line, after a comment, or renamed from an
# old name: env_int(renamed("NAME", old="OLD_NAME"), ...).
_SETTINGS_READ = re.compile(
    r"\benv_\w+\(\s*(?:#[^\n]*\n\s*)*(?:renamed\(\s*)?\"(?P<name>[A-Z][A-Z0-9_]*)\""
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command_of(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def interpolate(value: str) -> str:
    """What compose makes of a value when only the required variables are set."""

    def substitute(match: re.Match) -> str:
        if match["op"] in (":?", "?"):
            return f"placeholder-{match['name']}"
        return match["arg"] or ""

    return _INTERPOLATION.sub(substitute, value)


def required_variables(value) -> set[str]:
    return {m["name"] for m in _INTERPOLATION.finditer(str(value)) if "?" in (m["op"] or "")}


def settings_variables() -> set[str]:
    """Every environment variable messages/settings.py reads."""
    source = (ROOT / "messages" / "settings.py").read_text()
    return {match["name"] for match in _SETTINGS_READ.finditer(source)}


def env_example() -> dict[str, tuple[str, bool]]:
    """env.example's variables: name -> (value, commented out)."""
    found = {}
    for line in (ROOT / "env.example").read_text().splitlines():
        if match := _EXAMPLE_LINE.match(line):
            value = match["value"]
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            found[match["name"]] = (value, bool(match["commented"]))
    return found


# --- The Procfile, compose and the benchmark run the same processes ---------------------------


def test_every_procfile_process_has_a_service_running_the_same_program(services):
    for name, command in procfile_processes().items():
        assert name in services, f"Procfile process {name!r} has no compose service"
        # e.g. "celery -A messages worker"; compose restarts a dead worker itself.
        program = command.removeprefix(" ".join(RESPAWN) + " ").split(" --")[0]
        assert command_of(services[name]).startswith(program)


def test_a_dead_worker_is_started_again_by_make_run_and_by_compose(services):
    procfile = procfile_processes()
    for name in WORKERS:
        command = procfile[name].removeprefix(" ".join(RESPAWN) + " ")
        # Every worker runs niced (WORKER_NICENESS), the bulk one the most.
        assert command.removeprefix(f"nice -n {WORKER_NICENESS[name]} ").startswith("celery "), name
        assert command != procfile[name], f"{name} runs under {RESPAWN}"
        assert services[name]["restart"] == "unless-stopped", name


def test_the_workers_run_niced_in_the_procfile_compose_and_the_benchmark(services, monkeypatch):
    monkeypatch.delenv("INTERACTIVE_WORKER_CONCURRENCY", raising=False)
    monkeypatch.delenv("BULK_WORKER_CONCURRENCY", raising=False)
    procfile = procfile_processes()
    for name, niceness in WORKER_NICENESS.items():
        assert worker_spec(name, expand(procfile[name], {})).niceness == niceness
        assert worker_spec(name, interpolate(command_of(services[name]))).niceness == niceness
    # The benchmark starts each worker at the Procfile's niceness (bench/services.py).
    benched = {
        spec.name: spec.niceness for spec in worker_layouts(parse_args(["--smoke"]))["split"]
    }
    assert benched == {"interactive": 5, "bulk": 10, "signals": 5}


def test_the_web_process_is_not_niced_below_any_worker(services):
    """A request (a login's, a change signal's) preempts the workers' syncs on a shared host:
    the web process runs at niceness 0, every worker above it (docs/performance.md, 15m)."""
    procfile = procfile_processes()
    assert not procfile["web"].startswith("nice")
    assert command_of(services["web"]).startswith("gunicorn ")
    assert min(WORKER_NICENESS.values()) > 0
    # Bulk runs below the one-user syncs: a login's or a signal's sync gets the CPU first.
    assert WORKER_NICENESS["worker-bulk"] > max(
        WORKER_NICENESS["worker-interactive"], WORKER_NICENESS["worker-signals"]
    )


def test_the_procfile_splits_the_workers_by_queue():
    workers = {spec.queues: spec for spec in shipped_workers(environ={})}

    assert set(workers) == {(INTERACTIVE_QUEUE,), (BULK_QUEUE,), (SIGNALS_QUEUE,)}
    assert len({spec.name for spec in workers.values()}) == 3


def test_compose_runs_the_procfiles_workers_with_events(services):
    procfile = procfile_processes()
    for name in WORKERS:
        command = interpolate(command_of(services[name]))

        assert worker_spec(name, command) == worker_spec(name, expand(procfile[name], {}))
        assert "-E" in command.split()


def test_the_benchmark_measures_the_procfiles_workers(monkeypatch):
    monkeypatch.delenv("INTERACTIVE_WORKER_CONCURRENCY", raising=False)
    monkeypatch.delenv("BULK_WORKER_CONCURRENCY", raising=False)

    layouts = worker_layouts(parse_args(["--smoke"]))

    assert layouts["split"] == shipped_workers(environ={})
    bigger = worker_layouts(parse_args(["--smoke", "--bulk-concurrency", "5"]))["split"]
    assert [spec.concurrency for spec in bigger if spec.queues == (BULK_QUEUE,)] == [5]


def test_every_web_command_logs_access_through_the_masking_logger(services):
    """tests/test_access_log.py runs the Procfile's; compose and the image must match it."""
    logger = "messages.access_log.AccessLogger"
    dockerfile_cmd = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )

    assert f"--logger-class {logger}" in procfile_processes()["web"]
    assert f"--logger-class={logger}" in command_of(services["web"])
    assert f'"--logger-class", "{logger}"' in dockerfile_cmd


def test_app_services_are_built_from_the_dockerfile(services):
    for name in APP_SERVICES:
        assert services[name]["build"] == "."


# --- Health checks ----------------------------------------------------------------------------


def test_postgres_and_redis_are_healthchecked_and_awaited(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["redis"]["condition"] == "service_healthy"
    for name in APP_SERVICES[:-1]:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_web_is_healthchecked_through_healthz(services):
    command = services["web"]["healthcheck"]["test"]

    # The image is python:3.11-slim, without curl: the probe must be Python.
    assert command[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8000/healthz/" in command[3]


def test_each_worker_is_healthchecked_by_pinging_its_own_node(services):
    for name in WORKERS:
        spec = worker_spec(name, interpolate(command_of(services[name])))
        check = " ".join(services[name]["healthcheck"]["test"])

        assert "celery -A messages inspect ping" in check
        # `%h` is the container's host name; `$$` is compose's escape for `$`.
        assert f"-d {spec.name}@$$HOSTNAME" in check


def test_flower_is_healthchecked(services):
    check = " ".join(services["flower"]["healthcheck"]["test"])

    assert "http://127.0.0.1:5555/healthcheck" in check


# --- Every setting reaches the containers -----------------------------------------------------


def test_app_services_read_every_setting_from_the_env_file(services):
    for name in APP_SERVICES:
        assert services[name]["env_file"] == ".env", f"{name} has no env_file .env"


def test_env_file_is_never_committed_nor_built_into_the_image():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_env_example_documents_every_setting():
    missing = settings_variables() - set(env_example())

    assert not missing, f"settings read variables env.example does not document: {missing}"


def test_env_example_documents_only_variables_something_reads():
    unknown = set(env_example()) - settings_variables() - EXTERNAL_VARIABLES

    assert not unknown, f"env.example documents variables nothing reads: {unknown}"


def test_every_variable_given_to_a_service_is_read_by_the_settings(services):
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable in EXTERNAL_VARIABLES or variable.startswith("RABBITMQ_DEFAULT_"):
                continue
            assert variable in settings_variables(), (
                f"{name} sets {variable}, which messages/settings.py never reads"
            )


def test_compose_refuses_to_start_without_the_required_variables(services):
    required = set()
    for service in services.values():
        for value in service.get("environment", {}).values():
            required |= required_variables(value)

    assert required == REQUIRED
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert required_variables(environment["DJANGO_SECRET_KEY"]) == {"DJANGO_SECRET_KEY"}
        assert required_variables(environment["ENTITLEMENTS_BACKEND"]) == {"ENTITLEMENTS_BACKEND"}
    assert required_variables(services["flower"]["environment"]["FLOWER_BASIC_AUTH"])


def test_env_example_leaves_the_secrets_for_the_operator_to_set():
    example = env_example()
    for name in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert example[name] == ("", False), f"{name} must be an uncommented, empty line"
    assert not example["ENTITLEMENTS_BACKEND"][1]


def test_env_example_with_every_default_uncommented_passes_the_settings_validation(tmp_path):
    environment = {
        name: _INTERPOLATION.sub("placeholder", value)
        for name, (value, _commented) in env_example().items()
        # The image's folders are not there here.
        if name in settings_variables() and name not in {"DATA_DIR", "DJANGO_STATIC_ROOT"}
    }
    environment.update(DJANGO_SECRET_KEY="placeholder-secret", FLOWER_BASIC_AUTH="user:password")

    result = start_django(tmp_path, **environment)

    assert result.returncode == 0, result.stderr


def test_a_dot_env_made_from_the_example_passes_the_settings_validation(services, tmp_path):
    """`cp env.example .env`, the secrets filled in: what the web container gets."""
    dot_env = {
        name: value or f"placeholder-{name}"
        for name, (value, commented) in env_example().items()
        if not commented
    }
    environment = {**dot_env}
    for name, value in services["web"]["environment"].items():
        environment[name] = _INTERPOLATION.sub(
            lambda match: dot_env.get(match["name"]) or match["arg"] or "", str(value)
        )

    result = start_django(tmp_path, **environment)

    assert result.returncode == 0, result.stderr
    assert environment["DATABASE_URL"] == (
        "postgres://messages:placeholder-POSTGRES_PASSWORD@postgres:5432/messages"
    )
    assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    # A first start calls no outside service: the local backend with the demo's map.
    assert environment["ENTITLEMENTS_BACKEND"].endswith("LocalEntitlementsBackend")
    assert json.loads(environment["ENTITLEMENTS_BACKEND_PARAMETERS"])["admins_by_email"]


def test_env_example_shows_the_deploycenter_lines_to_switch_to(tmp_path):
    """The commented DeployCenter lines, uncommented as env.example says, pass the settings
    validation (only the values its operators give are to change)."""
    lines = [
        match
        for line in (ROOT / "env.example").read_text().splitlines()
        if (match := _EXAMPLE_LINE.match(line))
        and match["commented"]
        and match["name"].startswith("ENTITLEMENTS_BACKEND")
    ]
    deploycenter = {match["name"]: match["value"].strip("'") for match in lines}

    assert deploycenter["ENTITLEMENTS_BACKEND"].endswith("DeployCenterEntitlementsBackend")
    result = start_django(tmp_path, DJANGO_SECRET_KEY="placeholder-secret", **deploycenter)
    assert result.returncode == 0, result.stderr


# --- RabbitMQ profile -------------------------------------------------------------------------


def test_rabbitmq_is_a_profile_the_app_waits_for_only_when_enabled(services):
    rabbitmq = services["rabbitmq"]

    assert rabbitmq["profiles"] == ["rabbitmq"]
    assert rabbitmq["healthcheck"]["test"]
    for name in APP_SERVICES[:-1]:
        assert services[name]["depends_on"]["rabbitmq"] == {
            "condition": "service_healthy",
            "required": False,
        }


def test_the_broker_url_can_be_switched_to_the_rabbitmq_service(services):
    broker = services["web"]["environment"]["CELERY_BROKER_URL"]
    documented = env_example()["CELERY_BROKER_URL"][0]
    vhost = services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_VHOST"]
    user = services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]

    assert broker.startswith("${CELERY_BROKER_URL:-")
    assert documented == f"amqp://{user}:${{RABBITMQ_PASSWORD}}@rabbitmq:5672/{vhost}"
    assert env_example()["COMPOSE_PROFILES"][0] == "rabbitmq"


# --- The image: cached, reproducible dependency layers ----------------------------------------


def dockerfile_instructions() -> list[list[str]]:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [line.split(" ", 1) for line in lines if line and line[0] not in "# "]


def test_dockerfile_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()

    assert instructions[0] == ["FROM", "python:3.11-slim"]
    users = [argument for keyword, argument in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_the_image_pins_a_python_the_project_accepts_and_ci_runs_the_whole_suite_on():
    version = dockerfile_instructions()[0][1].removeprefix("python:").removesuffix("-slim")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]

    assert version in SpecifierSet(requires)
    # CI: the whole suite on the image's Python, the tests without broker on another.
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"make test PYTHON=python{version}\n" in ci
    assert "PYTEST_ARGS=\"-m 'not broker and not slow'\"" in ci


def test_dockerfile_installs_the_locked_dependencies_before_copying_the_source():
    instructions = dockerfile_instructions()
    copies = [index for index, (keyword, _) in enumerate(instructions) if keyword == "COPY"]

    # The first COPY brings the lock file alone: only a change to it reinstalls the tree.
    assert instructions[copies[0]] == ["COPY", "requirements.lock ./"]
    install_locked = instructions.index(
        ["RUN", "pip install --require-hashes -r requirements.lock"]
    )
    assert copies[0] < install_locked < copies[1]
    # The project itself is installed without resolving anything again.
    [install_project] = [
        argument
        for keyword, argument in instructions[copies[1] :]
        if keyword == "RUN" and argument.startswith("pip install")
    ]
    assert install_project.startswith("pip install --no-deps --no-build-isolation .")


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: canonical name -> (version, hashes)."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, *options = line.split(" --")
        name, version = requirement.strip().split("==")
        hashes = [option.strip() for option in options if option.startswith("hash=sha256:")]
        pins[canonicalize_name(name)] = (version, hashes)
    return pins


def test_the_lock_pins_every_package_with_hashes():
    pins = locked()

    assert len(pins) > 30  # the whole tree, not just the direct dependencies
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[\w.+!]+", version), f"{name} is not pinned to one version"
        assert hashes, f"{name} has no hash"


def test_the_lock_matches_pyprojects_pins_and_build_requirements():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked()
    stale = "requirements.lock is stale: run `make lock` and commit it"
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in the lock ({stale})"
        assert requirement.specifier.contains(pins[name][0]), f"{requirement} ({stale})"
    for line in pyproject["build-system"]["requires"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)][0])


def test_no_tracked_file_holds_a_merges_conflict_markers():
    # A conflict resolved in haste once left its markers in docs/performance.md: the file still
    # rendered, so nothing else would have told.
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    marker = re.compile(rb"^(<{7} |={7}$|>{7} )", re.MULTILINE)
    with_markers = [
        name.decode()
        for name in tracked
        if name
        and (ROOT / name.decode()).is_file()
        and marker.search((ROOT / name.decode()).read_bytes())
    ]
    assert with_markers == []
