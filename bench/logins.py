"""Figures 1, 2 and 7: what a login costs, how soon its rights land, and an enqueue storm."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from bench.data import CLAIMS
from core.authentication import request_login_sync
from core.entitlements import sync_user_entitlements
from core.entitlements.receipts import RequestOutcome
from core.models import EntitlementSyncState, Trigger, User

# The claims an identity provider hands over at login; only the siret is forwarded and kept.
LOGIN_CLAIMS = {**CLAIMS, "given_name": "Bench", "phone_number": "+33 1 00 00 00 00"}


def _ms(seconds: float) -> float:
    return seconds * 1000


def async_login(user: User) -> None:
    """The real post-login step (authentication.request_login_sync): claims, request, publish."""
    request_login_sync(user=user, claims=LOGIN_CLAIMS)


def inline_login(user: User) -> None:
    """The seed product's design: the same login step asks the upstream and reconciles inline."""
    EntitlementSyncState.objects.filter(user=user).update(
        forwarded_claims=CLAIMS, requested_at=timezone.now(), last_trigger=Trigger.LOGIN
    )
    sync_user_entitlements(user_id=user.pk, trigger=Trigger.LOGIN)


def timed_logins(
    users: list[User],
    login: Callable[[User], None],
    *,
    threads: int = 1,
    warmup: int = 0,
    every: float = 0.0,
) -> list[float]:
    """Milliseconds each login step took, logins run one after another in `threads` threads,
    one starting every `every` seconds at most.

    The first `warmup` users log in untimed (connections opened, code paths warm).
    """
    for user in users[:warmup]:
        login(user)
    users = users[warmup:]

    def run(share: list[User]) -> list[float]:
        timings = []
        started = time.perf_counter()
        try:
            for number, user in enumerate(share):
                delay = started + number * every * threads - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                timings.append(_timed(login, user))
        finally:
            # Each thread opened its own database connection.
            if threads > 1:
                connections.close_all()
        return timings

    if threads == 1:
        return run(users)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        shares = [users[number::threads] for number in range(threads)]
        return [ms for timings in pool.map(run, shares) for ms in timings]


def _timed(login: Callable[[User], None], user: User) -> float:
    started = time.perf_counter()
    login(user)
    return _ms(time.perf_counter() - started)


class GrantListener:
    """Tells the moment a user's first access is committed, by LISTEN/NOTIFY: no polling load.

    A bench-only trigger on core_maildomainaccess notifies the user id of every inserted row;
    the notification is delivered when the inserting transaction commits, i.e. when the right
    becomes visible. The trigger exists only while the listener is open.
    """

    CHANNEL = "bench_access_granted"

    def __enter__(self) -> "GrantListener":
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION bench_notify_access() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_notify('{self.CHANNEL}', NEW.user_id::text); RETURN NULL; END $$"
            )
            cursor.execute("DROP TRIGGER IF EXISTS bench_notify_access ON core_maildomainaccess")
            cursor.execute(
                "CREATE TRIGGER bench_notify_access AFTER INSERT ON core_maildomainaccess "
                "FOR EACH ROW EXECUTE FUNCTION bench_notify_access()"
            )
        database = settings.DATABASES["default"]
        self._connection = psycopg.connect(
            host=database["HOST"],
            port=database["PORT"] or 5432,
            user=database["USER"],
            password=database["PASSWORD"] or None,
            dbname=database["NAME"],
            autocommit=True,
        )
        self._connection.execute(f"LISTEN {self.CHANNEL}")
        return self

    def wait_for(self, user_id, *, timeout: float) -> float | None:
        """perf_counter() when the user's access was committed, None after `timeout` seconds."""
        wanted = str(user_id)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            for notification in self._connection.notifies(timeout=remaining):
                if notification.payload == wanted:
                    return time.perf_counter()
                if time.monotonic() > deadline:
                    break
        return None

    def grants(self, *, timeout: float):
        """(user id, perf_counter()) of each access committed during the next `timeout` s."""
        for notification in self._connection.notifies(timeout=timeout):
            yield notification.payload, time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        self._connection.close()
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS bench_notify_access ON core_maildomainaccess")


def login_to_rights(
    users: list[User],
    *,
    keep_going: Callable[[], bool] = lambda: True,
    pause: float = 0.0,
    timeout: float = 30.0,
) -> list[float]:
    """Milliseconds from the end of each login step to the user's first access being granted.

    Logins are made one at a time, `pause` seconds apart, while `keep_going()` holds (checked
    after the first: there is always one sample).
    """
    latencies = []
    with GrantListener() as listener:
        for number, user in enumerate(users):
            if number and not keep_going():
                break
            async_login(user)
            logged_in = time.perf_counter()
            granted = listener.wait_for(user.pk, timeout=timeout)
            if granted is None:
                raise RuntimeError(f"no access granted {timeout} s after a login")
            latencies.append(_ms(granted - logged_in))
            time.sleep(pause)
    return latencies


def storm(
    users: list[User], *, logins: int, seconds: float = 1.0, threads: int = 4
) -> tuple[list[float], int, float]:
    """`logins` logins spread over `users`, paced to fit in `seconds` by `threads` threads.

    Returns each login's milliseconds, how many logins got a task id (sent a task), and the
    seconds the whole storm took.
    """
    interval = seconds / logins
    started = time.perf_counter()
    sent = 0
    sent_lock = threading.Lock()

    def run(thread_number: int) -> list[float]:
        nonlocal sent
        timings = []
        try:
            for number in range(thread_number, logins, threads):
                delay = started + number * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                begin = time.perf_counter()
                request = request_login_sync(user=users[number % len(users)], claims=LOGIN_CLAIMS)
                timings.append(_ms(time.perf_counter() - begin))
                if request.outcome == RequestOutcome.QUEUED:
                    with sent_lock:
                        sent += 1
        finally:
            connections.close_all()
        return timings

    with ThreadPoolExecutor(max_workers=threads) as pool:
        timings = [ms for share in pool.map(run, range(threads)) for ms in share]
    return timings, sent, time.perf_counter() - started
