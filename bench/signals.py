"""Figure 9: change signals (DeployCenter's webhooks) through the web as shipped (gunicorn).

Change-to-rights of an account's signal, idle and during a full run; an organisation of 1,000
admins all asked; a storm of 1,000 signals for 100 users with logins timed meanwhile; the
endpoint's latency under a paced 1,000 signals/s.
"""

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from django.conf import settings
from django.db import connections
from django.utils import timezone

from bench import data
from bench.logins import GrantListener, login_to_rights
from bench.resync import cpu_snapshot, cpu_used
from bench.services import CHANGES_TOKEN, REPO
from bench.stub import ORGANISATION_SIRET
from core.entitlements import sync_user_entitlements
from core.models import AccessAuditEntry, EntitlementSyncState, Trigger, User

CHANGES_PATH = "/api/v1.0/entitlements/changes/"


class Signals:
    """Sends change signals to the web, as DeployCenter's webhooks do (one session a thread)."""

    def __init__(self, web_url: str):
        self.url = web_url + CHANGES_PATH
        self._local = threading.local()

    def send(self, body: dict) -> float:
        """POST one signal; seconds it took. Raises for an answer other than 202."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        started = time.perf_counter()
        response = session.post(
            self.url, json=body, headers={"Authorization": f"Bearer {CHANGES_TOKEN}"}, timeout=30
        )
        took = time.perf_counter() - started
        if response.status_code != 202:
            raise RuntimeError(f"signal answered {response.status_code}: {response.text[:200]}")
        return took

    def account(self, email: str) -> float:
        return self.send({"event_type": "account.updated", "account_email": email})


def synced_probes(*, kind: str, count: int) -> list[User]:
    """Users holding their current answer's domain: a change of that answer shows as a grant."""
    users = data.create_users(kind=kind, indexes=range(count))
    for user in users:
        sync_user_entitlements(user_id=user.pk, trigger=Trigger.COMMAND)
    return users


def change_to_rights(
    users: list[User],
    *,
    signals: Signals,
    stub,
    keep_going: Callable[[], bool] = lambda: True,
    every: float = 0.1,
    timeout: float = 60.0,
) -> list[tuple[User, float]]:
    """(user, ms) from each account signal's answer to the account's new right.

    One signal every `every` seconds while `keep_going()` holds, their syncs overlapping. As
    with DeployCenter, the webhook comes first and the change becomes visible right after it
    was answered (the stub's answer for that account changes then).
    """
    answered: dict[str, float] = {}
    granted: dict[str, float] = {}

    def send() -> None:
        for number, user in enumerate(users):
            if number and not keep_going():
                return
            signals.account(user.email)
            answered[str(user.pk)] = time.perf_counter()
            stub.control(bump=user.email)
            time.sleep(every)

    with GrantListener() as listener:
        sender = threading.Thread(target=send)
        sender.start()
        deadline = None
        while sender.is_alive() or set(answered) - set(granted):
            for user_id, at in listener.grants(timeout=0.5):
                if user_id in answered:
                    granted.setdefault(user_id, at)
            if not sender.is_alive():
                deadline = deadline or time.monotonic() + timeout
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no right {timeout} s after a change signal")
        sender.join()
    return [
        (user, (granted[str(user.pk)] - answered[str(user.pk)]) * 1000)
        for user in users
        if str(user.pk) in answered
    ]


def by_signal(samples: list[tuple[User, float]]) -> tuple[list[float], int]:
    """The samples whose new right the signal's sync granted, and how many a run granted first
    (a full run may reach the user between the change and the signal's settled sync)."""
    kept = [
        ms
        for user, ms in samples
        if AccessAuditEntry.objects.filter(
            user=user, action="granted", trigger=Trigger.CHANGE_SIGNAL
        ).exists()
    ]
    return kept, len(samples) - len(kept)


def organisation_fan_out(*, signals: Signals, admins: int, timeout: float = 600) -> float:
    """Seconds from an organisation's subscription signal to its last admin asked."""
    data.create_users(kind="org", indexes=range(admins), claims={"siret": ORGANISATION_SIRET})
    signalled = timezone.now()
    signals.send({"event_type": "subscription.updated", "organization_siret": ORGANISATION_SIRET})
    asked = EntitlementSyncState.objects.filter(
        user__sub__startswith="org-", last_trigger=Trigger.CHANGE_SIGNAL, finished_at__gte=signalled
    )
    deadline = time.monotonic() + timeout
    while asked.count() < admins:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the organisation's admins were not all asked in {timeout} s")
        time.sleep(0.25)
    last = max(asked.values_list("finished_at", flat=True))
    return (last - signalled).total_seconds()


def storm(
    *, signals: Signals, users: list[User], count: int, seconds: float = 1.0, threads: int = 16
) -> tuple[list[float], float]:
    """`count` account signals over `users`, paced to fit in `seconds`; each one's ms and the
    seconds the whole storm took."""
    interval = seconds / count
    started = time.perf_counter()

    def run(thread_number: int) -> list[float]:
        timings = []
        for number in range(thread_number, count, threads):
            delay = started + number * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            timings.append(signals.account(users[number % len(users)].email) * 1000)
        return timings

    with ThreadPoolExecutor(max_workers=threads) as pool:
        timings = [ms for share in pool.map(run, range(threads)) for ms in share]
    return timings, time.perf_counter() - started


def logins_during(users: list[User], *, seconds: float) -> tuple[threading.Thread, list[float]]:
    """Start timing login-to-rights in a thread for about `seconds`; join it to read them."""
    latencies: list[float] = []
    until = time.monotonic() + seconds

    def run() -> None:
        try:
            latencies.extend(
                login_to_rights(users, keep_going=lambda: time.monotonic() < until, pause=0.05)
            )
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, latencies


def settle_and_recheck_seconds() -> float:
    """How long a signal's syncs may take to be done: settle, recheck, and a margin."""
    return (
        settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS + settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    ) + 5


def offered_load(
    *, url: str, emails: list[str], rate: float, seconds: float, cpu_watch: dict
) -> dict:
    """Offer `rate` account signals a second for `seconds` from a sender process of its own
    (bench.signal_load, open loop); its figures, plus the CPU milliseconds each part in
    `cpu_watch` used per signal answered."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(emails))
        listing.flush()
        before = {name: cpu_snapshot(processes()) for name, processes in cpu_watch.items()}
        sender = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.signal_load",
                f"--url={url + CHANGES_PATH}",
                f"--token={CHANGES_TOKEN}",
                f"--rate={rate}",
                f"--seconds={seconds}",
                f"--emails={listing.name}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 120,
        )
        after = {name: cpu_snapshot(processes()) for name, processes in cpu_watch.items()}
    figures = json.loads(sender.stdout)
    answered = figures["statuses"].get("202", 0)
    for name in cpu_watch:
        used = cpu_used(before[name], after[name])
        figures[f"cpu_ms_per_signal_{name}"] = used * 1000 / answered if answered else 0.0
    return figures
