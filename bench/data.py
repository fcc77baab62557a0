"""The benchmark's data: users and domains made in bulk, tables emptied between runs."""

import time
import uuid

from django.db import connection

from bench.stub import DOMAIN_COUNT, account_email, domain_name
from core.models import EntitlementSyncState, MailDomain, User
from tests.deploycenter_stub import ALPHA_SIRET

CLAIMS = {"siret": ALPHA_SIRET}
_CHUNK = 5000


def empty_tables() -> None:
    """Start from nothing: no user, domain, access, audit row, run or task result."""
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE core_user, core_maildomain, core_syncrun, core_accessauditentry, "
            "django_celery_results_taskresult CASCADE"
        )


def create_domains() -> None:
    """Every domain the stub's answers name, so each answer grants what it says."""
    MailDomain.objects.bulk_create(
        [MailDomain(name=domain_name(number)) for number in range(DOMAIN_COUNT)]
    )


def create_users(
    *,
    kind: str,
    indexes: range,
    domains_each: int = 1,
    status: str = EntitlementSyncState.Status.PENDING,
    claims: dict | None = None,
) -> list[User]:
    """Users who logged in once (their forwarded siret is stored); returns them.

    A `pending` user is due for the next full resync; an `ok` one with no domain is not.
    """
    made = []
    for start in range(indexes.start, indexes.stop, _CHUNK):
        chunk = range(start, min(start + _CHUNK, indexes.stop))
        users = [
            User(
                id=uuid.uuid4(),
                email=account_email(kind, index, domains_each),
                sub=f"{kind}-{index}",
                # Unusable password: hashing 100,000 of them would dominate the set-up.
                password="!",
            )
            for index in chunk
        ]
        User.objects.bulk_create(users)
        EntitlementSyncState.objects.bulk_create(
            [
                EntitlementSyncState(user=user, forwarded_claims=claims or CLAIMS, status=status)
                for user in users
            ]
        )
        made += users
    return made


def delete_users(*, kind: str) -> None:
    """Remove one kind of users with their accesses and bookkeeping."""
    User.objects.filter(sub__startswith=f"{kind}-").delete()


def analyze() -> None:
    """Refresh the planner's statistics after a bulk load, as autovacuum would in time."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def access_row_writes() -> int:
    """Rows ever inserted plus deleted in core_maildomainaccess, by PostgreSQL's statistics.

    Backends report their counters when they go idle, at most every second, else after ten
    seconds: wait that long after the last write before reading a settled value.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_ins + n_tup_del FROM pg_stat_user_tables "
            "WHERE relname = 'core_maildomainaccess'"
        )
        return int(cursor.fetchone()[0])


def settled_access_row_writes(*, settle_seconds: float) -> int:
    """access_row_writes once every backend has reported its last writes."""
    time.sleep(settle_seconds)
    return access_row_writes()
