"""The DeployCenter stub as the benchmarks run it: a subprocess whose answers follow a formula.

`tests.deploycenter_stub.DeployCenterStub` answers over real HTTP with the live contract; this
subclass only changes two things a benchmark needs. The admin list of an account comes from its
email, `<kind>-<index>-<count>@bench.example`: `count` domains from `d<(index + generation)
mod domains>`, so 100,000 users need no table and bumping the generation changes every answer.
And the calls are counted instead of recorded one by one, so the stub's memory stays flat.
`GET /_bench/?latency=0.02&generation=1` flips the switches from the benchmark process;
`?bump=<email>` changes one account's answer (a change signal's change); `?ticks=read` returns
the calls counted per tenth of a second since `?ticks=reset` (the pacing figure's curve).

    python -m bench.stub [--port 0] [--latency 0.025]   # prints the endpoint URL, then serves
"""

import argparse
import json
import re
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from tests.deploycenter_stub import ALPHA_SIRET, DeployCenterStub, _Handler

CONTROL_PATH = "/_bench/"
DOMAIN_COUNT = 1000
EMAIL_DOMAIN = "bench.example"
_ACCOUNT = re.compile(r"^[a-z]+-(\d+)-(\d+)@" + re.escape(EMAIL_DOMAIN) + "$")

# The organisation of the change-signal benchmark's 1,000 admins (its own siret claim).
ORGANISATION_SIRET = "11111111100011"
ACCOUNTS = {
    "operator": {"name": "Bench Operator", "url": "https://operator.example.fr"},
    "organizations": [
        {
            "siret": siret,
            "name": name,
            "type": "commune",
            "subscribed": True,
            "admins": {},
        }
        for siret, name in (
            (ALPHA_SIRET, "Commune de Bench"),
            (ORGANISATION_SIRET, "Commune des Mille"),
        )
    ],
}


def domain_name(number: int) -> str:
    """The name of the benchmark's domain number `number`."""
    return f"d{number}.{EMAIL_DOMAIN}"


def account_email(kind: str, index: int, count: int = 1) -> str:
    """The email whose answer names `count` domains starting at `index` (plus the generation)."""
    return f"{kind}-{index}-{count}@{EMAIL_DOMAIN}"


def entitled_domains(email: str, *, generation: int) -> list[str]:
    """The admin list the stub answers for `email` at `generation` (its own, once bumped)."""
    match = _ACCOUNT.match(email)
    if not match:
        return []
    index, count = int(match[1]), int(match[2])
    return [domain_name((index + generation + offset) % DOMAIN_COUNT) for offset in range(count)]


class _NoDelayHandler(_Handler):
    """The stub's handler with TCP_NODELAY: it writes the headers and the body separately, and
    without this the body waits for the client's delayed ACK (Nagle), adding ~40 ms to every
    answer on loopback, which is the stub's artefact, not the upstream's latency."""

    disable_nagle_algorithm = True


class BenchStub(DeployCenterStub):
    """The contract's stub with formula answers, call counting and an HTTP control path."""

    def __init__(self, **kwargs):
        super().__init__(accounts=ACCOUNTS, **kwargs)
        self._server.RequestHandlerClass = _NoDelayHandler
        self.generation = 0
        # Per account: how many times its own answer changed (`?bump=<email>`): a change
        # signal's change, made visible the moment the bench asks.
        self.bumps: dict[str, int] = {}
        # Calls per tenth of a second (wall clock, int(time * 10)): a few thousand keys a run.
        self.ticks: Counter[int] = Counter()

    def _record(self, method: str, path: str, query: dict[str, list[str]], headers) -> None:
        tick = int(time.time() * 10)
        with self._lock:
            self.calls += 1
            self.ticks[tick] += 1

    def answer(self, method, path, raw_query, headers):
        if path == CONTROL_PATH:
            return self._control(parse_qs(raw_query))
        return super().answer(method, path, raw_query, headers)

    def _control(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if "latency" in query:
            self.latency = float(query["latency"][0])
        if "generation" in query:
            self.generation = int(query["generation"][0])
        for email in query.get("bump", []):
            with self._lock:
                self.bumps[email] = self.bumps.get(email, 0) + 1
        state: dict[str, Any] = {
            "latency": self.latency,
            "generation": self.generation,
            "calls": self.calls,
        }
        if query.get("ticks") == ["reset"]:
            with self._lock:
                self.ticks.clear()
        elif query.get("ticks") == ["read"]:
            with self._lock:
                state["ticks"] = dict(self.ticks)
        return 200, {"Content-Type": "application/json"}, json.dumps(state).encode()

    def _entitlements(self, params: dict[str, str]) -> dict[str, Any]:
        body = super()._entitlements(params)
        if "can_admin_maildomains" in body["entitlements"]:
            email = params.get("account_email", "")
            body["entitlements"]["can_admin_maildomains"] = entitled_domains(
                email, generation=self.generation + self.bumps.get(email, 0)
            )
        return body


def main() -> None:
    """Serve until terminated; the first line printed is the endpoint URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    stub = BenchStub(port=args.port)
    stub.latency = args.latency
    print(stub.url, flush=True)
    stub.serve_forever()


if __name__ == "__main__":
    main()
