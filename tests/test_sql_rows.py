"""core/sql_rows.py: plain rows written in one statement on PostgreSQL, by executemany on SQLite.

Every test runs on both: the suite's PostgreSQL, and an in-memory SQLite database (the
embedded default's engine) holding the tables it writes.
"""

import datetime
import uuid
from zoneinfo import ZoneInfo

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from core import sql_rows
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)

Status = EntitlementSyncState.Status
SQLITE = "sql_rows_sqlite"
WRITTEN_MODELS = (
    User,
    MailDomain,
    MailDomainAccess,
    EntitlementSyncState,
    AccessAuditEntry,
    SyncRun,
)
# A microsecond, and an offset other than UTC's: the value read back is the same instant.
PARIS_NOON = datetime.datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Paris"))


@pytest.fixture(params=["postgresql", "sqlite"])
def using(request):
    """The alias of the database the rows go to; sql_rows writes there."""
    if request.param == "postgresql":
        request.getfixturevalue("db")
        return "default"
    return request.getfixturevalue("sqlite_database")


@pytest.fixture
def sqlite_database(monkeypatch, django_db_blocker):
    """An in-memory SQLite database with the tables written here, where sql_rows writes."""
    configured = connections.configure_settings(
        {
            "default": connections.settings["default"],
            SQLITE: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        }
    )
    monkeypatch.setitem(connections.settings, SQLITE, configured[SQLITE])
    with django_db_blocker.unblock():
        connection = connections[SQLITE]
        with connection.schema_editor() as editor:
            for model in WRITTEN_MODELS:
                editor.create_model(model)
        monkeypatch.setattr(sql_rows, "_connection", lambda model: connection)
        yield SQLITE
        connection.close()
    del connections[SQLITE]


@pytest.fixture
def user(using):
    return User.objects.db_manager(using).create_user(email="admin@example.org", sub="admin")


@pytest.fixture
def domains(using):
    return [
        MailDomain.objects.using(using).create(name=f"d{number}.example.org") for number in range(2)
    ]


def test_inserted_rows_take_the_models_defaults(using, user, domains):
    before = datetime.datetime.now(datetime.UTC)

    sql_rows.insert_rows(
        MailDomainAccess,
        [
            {
                "user_id": user.pk,
                "maildomain_id": domain.pk,
                "source": MailDomainAccess.Source.MANUAL,
            }
            for domain in domains
        ],
    )

    accesses = list(MailDomainAccess.objects.using(using).order_by("maildomain__name"))
    assert [(access.maildomain_id, access.user_id) for access in accesses] == [
        (domain.pk, user.pk) for domain in domains
    ]
    assert [(access.role, access.source) for access in accesses] == [("admin", "manual")] * 2
    # A new uuid per row; both timestamps the time of the call, with its time zone.
    assert len({access.pk for access in accesses}) == 2
    assert all(isinstance(access.pk, uuid.UUID) for access in accesses)
    assert {access.created_at for access in accesses} == {accesses[0].updated_at}
    assert before <= accesses[0].created_at <= datetime.datetime.now(datetime.UTC)


def test_inserted_values_read_back_as_written(using, user):
    sql_rows.insert_rows(
        EntitlementSyncState,
        [
            {
                "user_id": user.pk,
                "status": Status.REVOCATIONS_HELD,
                "finished_at": PARIS_NOON,
                "requested_at": None,
                "entitled_domains": ["d0.example.org", "é.example.org"],
                "forwarded_claims": {"siret": "123", "nested": {"a": [1, None, True]}},
            }
        ],
    )

    state = EntitlementSyncState.objects.using(using).get()
    assert state.user_id == user.pk
    assert state.status == "revocations_held"
    assert state.finished_at == PARIS_NOON
    assert state.requested_at is None
    assert state.entitled_domains == ["d0.example.org", "é.example.org"]
    assert state.forwarded_claims == {"siret": "123", "nested": {"a": [1, None, True]}}
    # Absent fields: their defaults.
    assert (state.error_code, state.upstream_identity, state.access_ended_since) == ("", "", None)


def test_booleans_and_an_auto_primary_key(using):
    sql_rows.insert_rows(
        SyncRun,
        [
            {"trigger": "periodic", "budget_reached": True, "users_enqueued": 3},
            {"trigger": "admin", "budget_reached": False},
        ],
    )

    assert sorted(
        SyncRun.objects.using(using).values_list("trigger", "budget_reached", "users_enqueued")
    ) == [("admin", False, 0), ("periodic", True, 3)]


def test_a_conflicting_row_is_skipped_when_asked(using, user, domains):
    kept = MailDomainAccess.objects.using(using).create(
        user=user, maildomain=domains[0], source=MailDomainAccess.Source.MANUAL
    )
    rows = [
        {"user_id": user.pk, "maildomain_id": domain.pk, "source": "entitlements"}
        for domain in domains
    ]

    sql_rows.insert_rows(MailDomainAccess, rows, ignore_conflicts=True)

    assert sorted(
        MailDomainAccess.objects.using(using).values_list("maildomain__name", "source")
    ) == [("d0.example.org", "manual"), ("d1.example.org", "entitlements")]
    assert MailDomainAccess.objects.using(using).get(maildomain=domains[0]).pk == kept.pk


def test_each_row_updates_its_own_fields_and_no_other(using):
    users = [
        User.objects.db_manager(using).create_user(email=f"u{number}@example.org", sub=f"{number}")
        for number in range(3)
    ]
    for user in users:
        EntitlementSyncState.objects.using(using).create(
            user=user, status=Status.OK, error_code="old", access_ended_since=PARIS_NOON
        )

    sql_rows.update_rows(
        EntitlementSyncState,
        [
            {"user_id": users[0].pk, "status": Status.ERROR, "access_ended_since": None},
            {"user_id": str(users[1].pk), "status": Status.INVALID, "access_ended_since": None},
            # Another set of fields: a statement of its own.
            {"user_id": users[2].pk, "entitled_domains": ["d1.example.org"], "error_code": ""},
        ],
    )

    states = EntitlementSyncState.objects.using(using).order_by("user__sub")
    assert [
        (state.status, state.error_code, state.access_ended_since, state.entitled_domains)
        for state in states
    ] == [
        ("error", "old", None, []),
        ("invalid", "old", None, []),
        ("ok", "", PARIS_NOON, ["d1.example.org"]),
    ]


def test_no_rows_write_nothing(using):
    with CaptureQueriesContext(connections[using]) as captured:
        sql_rows.insert_rows(MailDomainAccess, [])
        sql_rows.update_rows(EntitlementSyncState, [])

    assert captured.captured_queries == []


def test_postgresql_writes_all_rows_in_one_statement(db, django_assert_num_queries):
    users = [User.objects.create_user(email=f"u{n}@example.org", sub=f"{n}") for n in range(50)]
    EntitlementSyncState.objects.bulk_create(EntitlementSyncState(user=user) for user in users)

    with django_assert_num_queries(1):
        sql_rows.update_rows(
            EntitlementSyncState,
            [{"user_id": user.pk, "finished_at": PARIS_NOON} for user in users],
        )

    assert set(EntitlementSyncState.objects.values_list("finished_at", flat=True)) == {PARIS_NOON}


def test_a_field_the_model_does_not_have_is_refused(db):
    with pytest.raises(ValueError, match=r"no columns \['user'\]"):
        sql_rows.insert_rows(EntitlementSyncState, [{"user": None}])


def test_a_naive_datetime_is_refused(db):
    user = User.objects.create_user(email="u@example.org", sub="u")

    with pytest.raises(ValueError, match="naive datetime"):
        sql_rows.insert_rows(
            EntitlementSyncState,
            [{"user_id": user.pk, "finished_at": datetime.datetime(2026, 12, 3, 12)}],
        )
