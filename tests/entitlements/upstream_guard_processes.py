"""Drive the circuit breaker and the rate limit from separate OS processes, as several workers
on several machines would; the cross-process tests start this module with `python -m`.

    python -m tests.entitlements.upstream_guard_processes breaker allow failure success state
    python -m tests.entitlements.upstream_guard_processes hammer PRIORITY THREADS PACE

`breaker` runs the listed breaker operations in order and prints their results as JSON.
`hammer` prints "ready", reads "START STOP" (wall-clock seconds) from stdin, then THREADS
threads take rate-limit tokens from START until STOP, each at most one per PACE seconds
(0: as fast as the limiter allows), and print the grant times, the waits and the grants of
each thread as JSON.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import django

REPO = Path(__file__).resolve().parents[2]


def start(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start this module in a new Python process with the given settings in its environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.entitlements.upstream_guard_processes", *args],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "messages.settings", **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run(*args: str, env: dict[str, str]) -> object:
    """Run this module to completion and return what it printed, decoded from JSON."""
    process = start(*args, env=env)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    return json.loads(out)


def _breaker(operations: list[str]) -> list:
    from core.entitlements.circuit_breaker import CircuitBreaker

    breaker = CircuitBreaker()
    results = []
    for operation in operations:
        if operation == "allow":
            admission = breaker.allow()
            results.append({"allowed": admission.allowed, "probe": bool(admission.probe_token)})
        elif operation == "failure":
            breaker.record_failure()
            results.append(None)
        elif operation == "success":
            breaker.record_success()
            results.append(None)
        else:
            results.append(breaker.state())
    return results


def _hammer(priority: str, threads: int, pace: float) -> dict:
    from core.entitlements.rate_limit import get_rate_limiter
    from core.entitlements.upstream_guard import Priority

    limiter = get_rate_limiter()
    limiter.acquire(priority=Priority(priority), timeout=0)  # connect before the start line
    print("ready", flush=True)
    start_at, stop_at = (float(value) for value in sys.stdin.readline().split())
    granted: list[float] = []
    waits: list[float] = []
    per_thread = [0] * threads
    lock = threading.Lock()

    def take_tokens(number: int) -> None:
        next_call = start_at
        while True:
            time.sleep(max(0.0, next_call - time.time()))
            asked = time.time()
            if asked >= stop_at:
                return
            if limiter.acquire(priority=Priority(priority), timeout=stop_at - asked):
                now = time.time()
                if now < stop_at:
                    with lock:
                        granted.append(now)
                        waits.append(now - asked)
                        per_thread[number] += 1
            next_call = asked + pace

    workers = [threading.Thread(target=take_tokens, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"granted": granted, "waits": waits, "per_thread": per_thread}


def main(argv: list[str]) -> None:
    """Run one command and print its JSON result on the last line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messages.settings")
    django.setup()
    if argv[0] == "breaker":
        result = _breaker(argv[1:])
    else:
        result = _hammer(argv[1], int(argv[2]), float(argv[3]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
