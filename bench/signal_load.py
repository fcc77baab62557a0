"""An open-loop sender of change signals: a fixed offered rate, latency from the intended send.

Run in its own process (`python -m bench.signal_load`), so the sender's CPU is not the
benchmark's, and its figures are not a closed loop's: request i is due at start + i / rate
whether or not earlier ones were answered, and its latency counts from that due time (a server
that falls behind shows it in the latencies, not in a slower sender). One TCP connection per
request, as gunicorn's sync workers close each one; raw HTTP/1.1 on asyncio streams, so the
sender costs little CPU next to what it measures.

Prints one JSON object: offered and achieved rates, answers by status, latency percentiles (ms).
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from bench.report import percentile

# Sockets open at once at most; beyond, a request waits (and its wait counts in its latency).
MAX_OPEN = 2000


def request_bytes(*, host: str, path: str, token: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


async def _one(host: str, port: int, data: bytes, slots: asyncio.Semaphore) -> int:
    """Send one request, read its answer to the end; its status (0: no answer)."""
    async with slots:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return 0
        try:
            writer.write(data)
            answer = await reader.read()  # the server closes the connection after its answer
        except OSError:
            return 0
        finally:
            writer.close()
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


async def offer(*, url: str, token: str, emails: list[str], rate: float, seconds: float) -> dict:
    """Offer `rate` account signals a second for `seconds` (round-robin over `emails`)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        request_bytes(
            host=parts.netloc,
            path=parts.path,
            token=token,
            body={"event_type": "account.updated", "account_email": email},
        )
        for email in emails
    ]
    count = max(1, round(rate * seconds))
    slots = asyncio.Semaphore(MAX_OPEN)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    late = 0.0

    async def timed(number: int, due: float) -> None:
        status = await _one(host, port, requests[number % len(requests)], slots)
        latencies.append((loop.time() - due) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    start = loop.time() + 0.05
    for number in range(count):
        due = start + number / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late = max(late, -wait)
        tasks.append(asyncio.create_task(timed(number, due)))
    sent_in = loop.time() - start
    await asyncio.gather(*tasks)
    took = loop.time() - start
    latencies.sort()
    answered = statuses.get(202, 0)
    return {
        "offered_per_s": rate,
        "signals": count,
        "sent_per_s": count / sent_in if sent_in > 0 else float(count),
        "sender_late_ms_max": late * 1000,
        "seconds": took,
        "answered_202_per_s": answered / took,
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "ms_p50": percentile(latencies, 0.5),
        "ms_p99": percentile(latencies, 0.99),
        "ms_max": latencies[-1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the changes endpoint's URL")
    parser.add_argument("--token", required=True)
    parser.add_argument("--rate", type=float, required=True, help="signals a second offered")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--emails", required=True, help="a file of account e-mails, one a line")
    options = parser.parse_args(argv)
    with open(options.emails) as lines:
        emails = [line.strip() for line in lines if line.strip()]
    started = time.process_time()
    figures = asyncio.run(
        offer(
            url=options.url,
            token=options.token,
            emails=emails,
            rate=options.rate,
            seconds=options.seconds,
        )
    )
    figures["sender_cpu_s"] = time.process_time() - started
    json.dump(figures, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
