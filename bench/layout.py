"""The worker layout as shipped: the Procfile's `celery worker` lines, read as its shell would.

The Procfile is the one definition: `make run` starts it, docker-compose.yml runs the same
workers (tests/test_deployment_files.py checks it), and the benchmark measures it.
"""

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
_WORKER_PROGRAM = ["celery", "-A", "messages", "worker"]
# The Procfile runs its workers under this, which starts a dead one again (messages/respawn.py).
RESPAWN = ["python", "-m", "messages.respawn"]
# ${NAME}, ${NAME:-default}, ${NAME-default}: the forms the Procfile uses.
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class WorkerSpec:
    """One `celery worker` process: its node name, queues, prefork concurrency and the
    niceness it runs at (`nice -n N` before `celery`)."""

    name: str
    queues: tuple[str, ...]
    concurrency: int
    niceness: int = 0


def expand(command: str, environ: Mapping[str, str]) -> str:
    """Substitute the `${...}` variables of a Procfile command as a POSIX shell does."""

    def value(match: re.Match) -> str:
        found = environ.get(match["name"])
        if found is None or (match["colon"] and found == ""):
            return match["default"] or ""
        return found

    return _VARIABLE.sub(value, command)


def procfile_processes(path: Path = PROCFILE) -> dict[str, str]:
    """Each Procfile process name and its command, in file order."""
    processes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def worker_spec(process: str, command: str) -> WorkerSpec | None:
    """The worker a command starts, or None if it is not `celery -A messages worker`."""
    argv = shlex.split(command)
    if argv[: len(RESPAWN)] == RESPAWN:
        argv = argv[len(RESPAWN) :]
    niceness = 0
    if argv[:2] == ["nice", "-n"]:
        niceness, argv = int(argv[2]), argv[3:]
    if argv[: len(_WORKER_PROGRAM)] != _WORKER_PROGRAM:
        return None
    options = _options(argv[len(_WORKER_PROGRAM) :])
    queues = options.get("--queues") or options.get("-Q")
    concurrency = options.get("--concurrency") or options.get("-c")
    hostname = options.get("--hostname") or options.get("-n")
    if not (queues and concurrency and hostname):
        raise ValueError(
            f"Procfile process {process!r} must give --queues, --concurrency and --hostname"
        )
    return WorkerSpec(
        name=hostname.split("@", 1)[0],
        queues=tuple(queues.split(",")),
        concurrency=int(concurrency),
        niceness=niceness,
    )


def shipped_workers(
    environ: Mapping[str, str] | None = None, path: Path = PROCFILE
) -> list[WorkerSpec]:
    """The Procfile's workers, with its variables taken from `environ` (default: ours)."""
    environ = os.environ if environ is None else environ
    specs = [
        worker_spec(name, expand(command, environ))
        for name, command in procfile_processes(path).items()
    ]
    return [spec for spec in specs if spec]


def _options(arguments: list[str]) -> dict[str, str]:
    """`--name=value`, `--name value` and `-x value` options as a dict."""
    options = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if argument.startswith("-") and "=" in argument:
            name, value = argument.split("=", 1)
            options[name] = value
        elif (
            argument.startswith("-")
            and index + 1 < len(arguments)
            and not arguments[index + 1].startswith("-")
        ):
            options[argument] = arguments[index + 1]
            index += 1
        index += 1
    return options
