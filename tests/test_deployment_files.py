"""docker-compose.yml and the Dockerfile match the Procfile and the settings (no Docker here,
so the files are parsed and their environment is run through the settings)."""

import re
from pathlib import Path

import pytest
import yaml

from tests.test_settings_validation import start_django

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("web", "worker", "beat", "flower", "migrate")
# Read by something other than messages/settings.py: the postgres image, Flower itself.
EXTERNAL_VARIABLES = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"}
# Compose refuses to start without these (`${NAME:?message}`): nothing secret has a default,
# and no backend either (a lost ENTITLEMENTS_BACKEND must stop the stack, not run it unmapped).
REQUIRED_SECRETS = {
    "DJANGO_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "ENTITLEMENTS_BACKEND",
}
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def command_of(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def interpolate(value: str) -> str:
    """What compose makes of a value when only the required secrets are set."""

    def substitute(match: re.Match) -> str:
        if match["op"] in (":?", "?"):
            return f"placeholder-{match['name']}"
        return match["arg"] or ""

    return _INTERPOLATION.sub(substitute, value)


def test_every_procfile_process_has_a_service_running_the_same_program(services):
    for name, command in procfile().items():
        assert name in services, f"Procfile process {name!r} has no compose service"
        program = command.split(" --")[0]  # e.g. "celery -A messages worker"
        assert command_of(services[name]).startswith(program)


def test_app_services_are_built_from_the_dockerfile(services):
    for name in APP_SERVICES:
        assert services[name]["build"] == "."


def test_worker_consumes_both_queues_with_events(services):
    command = command_of(services["worker"]).split()

    assert "--queues=interactive,bulk" in command
    assert "-E" in command


def test_postgres_and_redis_are_healthchecked_and_awaited(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["redis"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat", "flower"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_every_variable_given_to_a_service_is_read_by_the_settings(services):
    settings_source = (ROOT / "messages" / "settings.py").read_text()
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable in EXTERNAL_VARIABLES:
                continue
            assert f'"{variable}"' in settings_source, (
                f"{name} sets {variable}, which messages/settings.py never reads"
            )


def test_app_services_get_the_essential_variables(services):
    essential = {
        "DATABASE_URL",
        "REDIS_URL",
        "DJANGO_SECRET_KEY",
        "DJANGO_ALLOWED_HOSTS",
        "PROVISIONING_API_KEY",
        "ENTITLEMENTS_BACKEND",
        "ENTITLEMENTS_BACKEND_PARAMETERS",
    }
    for name in APP_SERVICES:
        assert essential <= set(services[name]["environment"])


def test_secrets_have_no_default_and_flower_requires_basic_auth(services):
    required = set()
    for service in services.values():
        for value in service.get("environment", {}).values():
            required |= {
                m["name"] for m in _INTERPOLATION.finditer(str(value)) if "?" in (m["op"] or "")
            }
    assert required == REQUIRED_SECRETS
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_compose_environment_passes_the_settings_validation(services, tmp_path):
    environment = {
        name: interpolate(str(value)) for name, value in services["web"]["environment"].items()
    }
    # A required variable is a placeholder: the backend must be a class the settings can load.
    environment["ENTITLEMENTS_BACKEND"] = (
        "core.entitlements.backends.local.LocalEntitlementsBackend"
    )

    result = start_django(tmp_path, **environment)

    assert result.returncode == 0, result.stderr
    assert environment["DATABASE_URL"] == (
        "postgres://messages:placeholder-POSTGRES_PASSWORD@postgres:5432/messages"
    )


def test_dockerfile_builds_the_package_and_runs_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line.split(" ", 1) for line in dockerfile if line and line[0] not in "# "]

    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert ["RUN", "pip install ."] in instructions
    users = [argument for keyword, argument in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_web_is_healthchecked_through_healthz(services):
    command = services["web"]["healthcheck"]["test"]

    # The image is python:3.11-slim, without curl: the probe must be Python.
    assert command[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8000/healthz/" in command[3]
