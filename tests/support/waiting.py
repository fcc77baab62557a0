"""Polling until a condition holds, with a deadline that names what was awaited."""

import time


def wait_until(predicate, *, timeout: float = 20.0, message: str = "condition", every=0.05):
    """Call `predicate` until it returns something truthy; return it, or fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {message}"
        time.sleep(every)
