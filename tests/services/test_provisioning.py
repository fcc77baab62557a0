"""provision_maildomains(): the service DeployCenter's endpoint calls, including races."""

import threading
import time

import pytest
from django.db import connection, connections, transaction

from core.models import MailDomain
from core.services import ProvisioningError, provision_maildomains
from tests.factories import MailDomainFactory


def test_returns_created_rows_for_whoever_grants_their_admins(db):
    MailDomainFactory(name="old.example.org")

    result = provision_maildomains(
        names=["new.example.org", "old.example.org", "bad"], custom_attributes=None
    )

    assert [type(d) for d in result.created] == [MailDomain]
    assert result.created[0].pk == MailDomain.objects.get(name="new.example.org").pk
    assert [d.name for d in result.existing] == ["old.example.org"]
    assert result.errors == [ProvisioningError(domain="bad", error="invalid domain name")]
    assert result.as_dict() == {
        "created": ["new.example.org"],
        "existing": ["old.example.org"],
        "errors": [{"domain": "bad", "error": "invalid domain name"}],
    }


def test_query_count_does_not_grow_with_the_number_of_domains(db, django_assert_max_num_queries):
    MailDomainFactory.create_batch(50)
    names = [f"domain{i}.example.org" for i in range(200)]

    # 8 to provision, 1 to look for users already entitled to the new domains.
    with django_assert_max_num_queries(9):
        result = provision_maildomains(names=names, custom_attributes={"plan": "x"})

    assert len(result.created) + len(result.existing) == 200


def _wait_until_blocked_on_a_lock(pid: int) -> None:
    with connections["default"].cursor() as cursor:
        for _ in range(200):
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.05)
    pytest.fail("the concurrent provisioning never waited on our insert")


@pytest.mark.django_db(transaction=True)
def test_a_domain_created_concurrently_counts_as_existing():
    """Our transaction inserts the name first; the call that races it waits, skips the row
    instead of failing, and reports the domain as existing with the attributes applied."""
    outcome = {}
    started = threading.Event()

    def provision():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                outcome["pid"] = cursor.fetchone()[0]
            started.set()
            outcome["result"] = provision_maildomains(
                names=["race.example.org", "calm.example.org"], custom_attributes={"v": 2}
            )
        except Exception as error:  # reported to the main thread, which fails the test
            outcome["error"] = error
        finally:
            started.set()
            connection.close()

    with transaction.atomic():
        MailDomain.objects.create(name="race.example.org", custom_attributes={"v": 1})
        worker = threading.Thread(target=provision)
        worker.start()
        started.wait(5)
        _wait_until_blocked_on_a_lock(outcome["pid"])
    worker.join(10)

    assert "error" not in outcome
    result = outcome["result"]
    assert [d.name for d in result.created] == ["calm.example.org"]
    assert [d.name for d in result.existing] == ["race.example.org"]
    assert MailDomain.objects.get(name="race.example.org").custom_attributes == {"v": 2}
    assert MailDomain.objects.count() == 2
