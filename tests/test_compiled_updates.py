"""A sync request's UPDATE compiled once (core.compiled_updates): the statement the ORM runs,
with the same parameters, matching and writing the same rows, on PostgreSQL (the test
database) and on SQLite (the embedded default); on PostgreSQL in autocommit, as a statement
prepared on the server session, safe behind a pooler."""

import uuid
from contextlib import contextmanager
from datetime import timedelta
from functools import partial

import pytest
from django.db import connections, transaction
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper
from django.db.models import Q
from django.utils import timezone

from core import compiled_updates
from core.compiled_updates import CompiledUpdate, Param, model_field
from core.entitlements import sync_requests
from core.models import EntitlementSyncState, Trigger, User
from core.querysets import no_task_waiting

SQLITE = "compiled_updates_sqlite"
CLAIMS = {"siret": "13002526500013"}
NOW = timezone.now()


class WritesToSQLite:
    """A database router sending every write to the SQLite alias of the test."""

    def db_for_write(self, model, **hints):
        return SQLITE


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request, db, settings, tmp_path):
    """The alias the request's UPDATEs go to: the test PostgreSQL, or a SQLite file made for
    the test with the two tables they touch."""
    if request.param == "postgresql":
        yield "default"
        return
    wrapper = SQLiteWrapper(
        {**connections["default"].settings_dict, "NAME": str(tmp_path / "db.sqlite3")}, SQLITE
    )
    wrapper.settings_dict.update(ENGINE="django.db.backends.sqlite3", OPTIONS={})
    connections[SQLITE] = wrapper
    try:
        with wrapper.schema_editor() as editor:
            editor.create_model(User)
            editor.create_model(EntitlementSyncState)
        settings.DATABASE_ROUTERS = [f"{__name__}.WritesToSQLite"]
        yield SQLITE
    finally:
        wrapper.close()
        del connections[SQLITE]


def make_state(alias: str, **fields) -> EntitlementSyncState:
    user = User.objects.using(alias).create(email=f"{uuid.uuid4().hex}@example.org")
    return EntitlementSyncState.objects.using(alias).create(user=user, **fields)


@contextmanager
def statements(alias: str):
    """The (sql, params) of every statement run on `alias` in the block."""
    seen: list[tuple[str, list]] = []

    def capture(execute, sql, params, many, context):
        seen.append((sql, [getattr(param, "obj", param) for param in params or ()]))
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(capture):
        yield seen


def orm_claim(alias: str, *, user_id, fields: dict, due_at, not_enqueued_since) -> int:
    """The claiming UPDATE as the ORM runs it at each request (before it was compiled)."""
    other_triggers_task = ~Q(last_trigger=fields["last_trigger"])
    if due_at <= NOW:
        other_triggers_task &= Q(enqueued_at__gt=NOW)
    claimable = no_task_waiting(queued_since=not_enqueued_since) | other_triggers_task
    states = EntitlementSyncState.objects.using(alias).filter(user_id=user_id).filter(claimable)
    return states.update(enqueued_at=due_at, status=sync_requests._PENDING_IF_NEVER, **fields)


def compiled_claim(*, user_id, fields: dict, due_at, not_enqueued_since) -> int:
    statement = sync_requests._claiming_update(
        stores_claims="forwarded_claims" in fields, due_now=due_at <= NOW
    )
    return statement.run(
        user_id=user_id, now=NOW, due_at=due_at, not_enqueued_since=not_enqueued_since, **fields
    )


def request_fields(*, trigger: Trigger, stores_claims: bool) -> dict:
    fields = {"requested_at": NOW, "last_trigger": trigger}
    if stores_claims:
        fields["forwarded_claims"] = CLAIMS
    return fields


def columns(alias: str, state: EntitlementSyncState) -> dict:
    row = EntitlementSyncState.objects.using(alias).filter(pk=state.pk).values().get()
    del row["user_id"]
    return row


@pytest.mark.parametrize("stores_claims", [True, False], ids=["claims", "no-claims"])
@pytest.mark.parametrize("delay", [0, 5], ids=["due-now", "delayed"])
def test_the_compiled_statement_is_the_one_the_orm_runs(database, stores_claims, delay):
    state = make_state(database)
    request = {
        "user_id": state.pk,
        "fields": request_fields(trigger=Trigger.LOGIN, stores_claims=stores_claims),
        "due_at": NOW + timedelta(seconds=delay),
        "not_enqueued_since": NOW - timedelta(seconds=30),
    }

    with statements(database) as by_the_orm:
        orm_claim(database, **request)
    with statements(database) as compiled:
        compiled_claim(**request)

    assert compiled == by_the_orm


def test_the_recording_statement_is_the_one_the_orm_runs(database):
    state = make_state(database)
    fields = request_fields(trigger=Trigger.LOGIN, stores_claims=True)

    with statements(database) as by_the_orm:
        EntitlementSyncState.objects.using(database).filter(user_id=state.pk).update(
            status=sync_requests._PENDING_IF_NEVER, **fields
        )
    with statements(database) as compiled:
        sync_requests._recording_update(stores_claims=True).run(user_id=state.pk, now=NOW, **fields)

    assert compiled == by_the_orm


# Rows as a request finds them: where the claiming UPDATE must match, and where it must not.
ROWS = {
    "never requested": {},
    "a task of long ago": {"status": "ok", "enqueued_at": NOW - timedelta(minutes=5)},
    "a task waiting": {"status": "pending", "enqueued_at": NOW - timedelta(seconds=1)},
    "a task started since": {
        "status": "pending",
        "enqueued_at": NOW - timedelta(seconds=2),
        "started_at": NOW - timedelta(seconds=1),
    },
    "another trigger's task not due yet": {
        "status": "pending",
        "enqueued_at": NOW + timedelta(seconds=3),
        "last_trigger": Trigger.CHANGE_SIGNAL,
    },
    "another trigger's task due": {
        "status": "pending",
        "enqueued_at": NOW - timedelta(seconds=1),
        "last_trigger": Trigger.CHANGE_SIGNAL,
    },
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
@pytest.mark.parametrize("delay", [0, 5], ids=["due-now", "delayed"])
def test_the_compiled_statement_matches_and_writes_rows_as_the_orm(database, row, delay):
    by_the_orm, compiled = make_state(database, **row), make_state(database, **row)
    request = {
        "fields": request_fields(trigger=Trigger.LOGIN, stores_claims=True),
        "due_at": NOW + timedelta(seconds=delay),
        "not_enqueued_since": NOW - timedelta(seconds=30),
    }

    matched_by_the_orm = orm_claim(database, user_id=by_the_orm.pk, **request)
    matched = compiled_claim(user_id=compiled.pk, **request)

    assert matched == matched_by_the_orm
    assert columns(database, compiled) == columns(database, by_the_orm)


def test_a_statement_is_built_once_per_database(db):
    builds = []

    def build():
        builds.append(1)
        states = EntitlementSyncState.objects.filter(
            user_id=Param("user_id", output_field=model_field(EntitlementSyncState, "user"))
        )
        return states, {"error_code": "compiled"}

    statement = CompiledUpdate(EntitlementSyncState, build)
    user_id = make_state("default").pk

    assert [statement.run(user_id=user_id), statement.run(user_id=user_id)] == [1, 1]
    assert len(builds) == 1


# --- Prepared on the server session (DB_PREPARED_UPDATES, docs/performance.md figure 15m) ----


@pytest.fixture
def fresh_session(transactional_db):
    """Autocommit on the test PostgreSQL, in a server session holding no prepared statement."""
    with connections["default"].cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    compiled_updates._prepared.clear()


def kinds(seen: list[tuple[str, list]]) -> list[str]:
    """Each statement's first words: PREPARE+EXECUTE, EXECUTE or UPDATE."""
    return [
        "PREPARE+EXECUTE" if sql.startswith("PREPARE") and "; EXECUTE " in sql else sql.split()[0]
        for sql, _params in seen
    ]


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_the_prepared_statement_matches_and_writes_rows_as_the_orm(fresh_session, row):
    request = {
        "fields": request_fields(trigger=Trigger.LOGIN, stores_claims=True),
        "due_at": NOW,
        "not_enqueued_since": NOW - timedelta(seconds=30),
    }
    by_the_orm = [make_state("default", **row) for _ in range(2)]
    prepared = [make_state("default", **row) for _ in range(2)]

    matched_by_the_orm = [orm_claim("default", user_id=s.pk, **request) for s in by_the_orm]
    with statements("default") as seen:
        matched = [compiled_claim(user_id=s.pk, **request) for s in prepared]

    assert kinds(seen) == ["PREPARE+EXECUTE", "EXECUTE"]
    assert matched == matched_by_the_orm
    for state, reference in zip(prepared, by_the_orm, strict=True):
        assert columns("default", state) == columns("default", reference)


def test_a_session_that_lost_the_statement_prepares_it_again(fresh_session):
    """A pooler (PgBouncer) may send the next query to another server session, and DISCARD ALL
    drops what a session prepared: the EXECUTE fails there, and runs again with its PREPARE."""
    states = [make_state("default") for _ in range(3)]
    claim = partial(
        compiled_claim,
        fields=request_fields(trigger=Trigger.LOGIN, stores_claims=False),
        due_at=NOW,
        not_enqueued_since=NOW - timedelta(seconds=30),
    )

    with statements("default") as seen:
        assert claim(user_id=states[0].pk) == 1
        with connections["default"].cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        assert claim(user_id=states[1].pk) == 1
        assert claim(user_id=states[2].pk) == 1

    assert kinds(seen) == [
        "PREPARE+EXECUTE",
        "DEALLOCATE",
        "EXECUTE",  # 26000: not prepared on this session
        "PREPARE+EXECUTE",
        "EXECUTE",
    ]
    assert all(EntitlementSyncState.objects.get(pk=state.pk).enqueued_at == NOW for state in states)


def test_a_session_that_holds_the_statement_already_runs_it(fresh_session):
    """Behind a pooler, another process may have prepared the statement on the server session
    this query lands on: the PREPARE fails (42P05), the EXECUTE alone runs."""
    first, second = make_state("default"), make_state("default")
    claim = partial(
        compiled_claim,
        fields=request_fields(trigger=Trigger.LOGIN, stores_claims=False),
        due_at=NOW,
        not_enqueued_since=NOW - timedelta(seconds=30),
    )
    assert claim(user_id=first.pk) == 1
    # This process forgets it prepared the statement; the server session still has it.
    compiled_updates._prepared.clear()

    with statements("default") as seen:
        assert claim(user_id=second.pk) == 1

    assert kinds(seen) == ["PREPARE+EXECUTE", "EXECUTE"]
    assert EntitlementSyncState.objects.get(pk=second.pk).enqueued_at == NOW


def test_the_statement_is_sent_whole_in_a_transaction_or_when_switched_off(fresh_session, settings):
    state = make_state("default")
    claim = partial(
        compiled_claim,
        user_id=state.pk,
        fields=request_fields(trigger=Trigger.LOGIN, stores_claims=False),
        due_at=NOW,
        not_enqueued_since=NOW - timedelta(seconds=30),
    )

    with statements("default") as seen:
        with transaction.atomic():
            claim()
        settings.DB_PREPARED_UPDATES = False
        claim()

    assert kinds(seen) == ["UPDATE", "UPDATE"]
