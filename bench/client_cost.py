"""The DeployCenter client's CPU per call: main's way (requests' pooled adapter, up to 0f3b2ca)
and urllib3's pool called directly (the shipped client), side by side in one run.

    python -m bench.client_cost [--calls 2000] [--rounds 3]

In this process, in one thread, against the benchmark's stub in its own process at no latency:
the calling thread's CPU time (`time.thread_time`) over `get_entitlements` for users the stub
names two domains, in blocks of `calls` in the order A B B A per round, so both sides share the
machine's load. Each side's log line costs what it costs in a worker at LOG_LEVEL=INFO (main
wrote one line per call; the shipped client writes an authoritative answer's at DEBUG), and the
metrics are written to a PROMETHEUS_MULTIPROC_DIR as in production.
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

# core.metrics reads it when imported, as a worker does when it starts.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="client-cost-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messages.settings")

import django

django.setup()

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

from bench.services import StubProcess  # noqa: E402
from bench.stub import account_email  # noqa: E402
from core.entitlements.backends import deploycenter  # noqa: E402
from core.entitlements.backends.base import AnswerKind  # noqa: E402
from core.models import User  # noqa: E402
from tests.deploycenter_stub import ALPHA_SIRET  # noqa: E402

LOGGER = logging.getLogger(deploycenter.__name__)


class RequestsWayBackend(deploycenter.DeployCenterEntitlementsBackend):
    """The client as main had it: each call prepared by requests and sent through its pooled
    adapter, with the environment's settings read when built. Kept here only, to compare."""

    def __init__(self, **parameters):
        super().__init__(**parameters)
        self._adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=deploycenter.POOL_MAXSIZE, max_retries=0
        )
        merged = requests.Session().merge_environment_settings(self.base_url, {}, None, None, None)
        self._environment = {name: merged[name] for name in ("proxies", "verify", "cert")}

    def _get(self, params: dict[str, str]) -> tuple[int, bytes | None]:
        deadline = time.monotonic() + sum(self.timeout)
        request = requests.Request("GET", self.base_url, params=params, headers=self._headers)
        with self._adapter.send(
            request.prepare(), stream=True, timeout=self.timeout, **self._environment
        ) as response:
            if response.status_code != 200:
                return response.status_code, None
            return 200, _read_body(response, deadline=deadline)


def _read_body(response: requests.Response, *, deadline: float) -> bytes | None:
    """main's `_read_body`, through requests' `iter_content`."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > deploycenter.MAX_BODY_BYTES:
        return None
    body = bytearray()
    for chunk in response.iter_content(chunk_size=64 * 1024):
        body += chunk
        if len(body) > deploycenter.MAX_BODY_BYTES:
            return None
        if time.monotonic() > deadline:
            raise requests.Timeout("the body took longer than the timeout")
    return bytes(body)


def _log_like_a_worker() -> None:
    """The client's lines formatted and written as a worker at LOG_LEVEL=INFO writes them."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (open for the run)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    LOGGER.handlers = [handler]
    LOGGER.propagate = False


def _block_ms_per_call(backend, users: list[User], *, main_way: bool) -> float:
    """The thread's CPU ms per call over one block of calls, one per user."""
    # main logged every answer at INFO: its line is written, as the shipped client's DEBUG
    # line would be if it were still INFO.
    LOGGER.setLevel(logging.DEBUG if main_way else logging.INFO)
    claims = {"siret": ALPHA_SIRET}
    started = time.thread_time()
    for user in users:
        answer = backend.get_entitlements(user=user, forwarded_claims=claims)
        if answer.kind is not AnswerKind.AUTHORITATIVE:
            raise RuntimeError(f"the stub answered {answer.kind} {answer.error_code}")
    return (time.thread_time() - started) * 1000 / len(users)


def client_cost(*, calls: int, rounds: int, log: Path) -> dict[str, float]:
    """Median CPU ms per call of each way, and their ratio."""
    stub = StubProcess(log=log)
    try:
        stub.control(latency=0)
        parameters = stub.backend_parameters()
        backends = {
            True: RequestsWayBackend(**parameters),
            False: deploycenter.DeployCenterEntitlementsBackend(**parameters),
        }
        users = [User(email=account_email("user", index, 2)) for index in range(calls)]
        _log_like_a_worker()
        for main_way, backend in backends.items():  # connections opened, code paths warm
            _block_ms_per_call(backend, users[:50], main_way=main_way)
        blocks: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for main_way in (True, False, False, True):
                blocks[main_way].append(
                    _block_ms_per_call(backends[main_way], users, main_way=main_way)
                )
    finally:
        stub.stop()
    main, shipped = statistics.median(blocks[True]), statistics.median(blocks[False])
    return {
        "client_cpu_ms_per_call_main": round(main, 4),
        "client_cpu_ms_per_call_urllib3": round(shipped, 4),
        "client_cpu_ratio": round(shipped / main, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B B A blocks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        figures = client_cost(
            calls=args.calls, rounds=args.rounds, log=Path(directory) / "stub.log"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
