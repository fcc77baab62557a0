"""UPDATE statements spelled with the ORM, turned into SQL once per process and run many times.

Building a conditional UPDATE costs the ORM ~0.7-0.8 ms of CPU (Q objects, lookups, compilation),
more than a login's whole round trip to PostgreSQL. A `CompiledUpdate` asks the ORM for the
statement once, with each changing value standing in as a `Param`, keeps the SQL and its
parameter list, and then only fills the parameters in. The querysets stay the one spelling of
each condition (`core.querysets`); this module never writes SQL of its own.
"""

import hashlib
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, router, transaction
from django.db.models import Field, Model, QuerySet, Value
from django.db.models.sql import UpdateQuery

# PostgreSQL's error codes a prepared statement meets when the server session it runs on is not
# the one it was prepared on (a pooler, DISCARD ALL), or already holds it (a pooler's session
# shared with another process): https://www.postgresql.org/docs/current/errcodes-appendix.html
_NOT_PREPARED = "26000"  # invalid_sql_statement_name
_ALREADY_PREPARED = "42P05"  # duplicate_prepared_statement

# The statements prepared on each psycopg connection, by name: a new connection (Django's
# reconnection, CONN_MAX_AGE) starts without any.
_prepared: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()


class Param(Value):
    """A value an UPDATE is compiled without: the ORM places its `%s`, `CompiledUpdate` fills
    it at each run, prepared for the database as the ORM would prepare a value of
    `output_field` (so `output_field` is the field it is compared with or stored in)."""

    def __init__(self, name: str, *, output_field: Field) -> None:
        # Not None: the ORM reads Value(None) as NULL (JSON null for a JSONField).
        super().__init__(name, output_field=output_field)
        self.name = name

    def as_sql(self, compiler, connection):
        # The marker itself stands in the compiled parameters, to be replaced at each run.
        return "%s", [self]

    def prepared(self, value: Any, connection) -> Any:
        """`value` as the ORM sends it: a stored value is prepared for saving."""
        if self.for_save:
            return self.output_field.get_db_prep_save(value, connection=connection)
        return self.output_field.get_db_prep_value(value, connection=connection)


class CompiledUpdate:
    """An UPDATE of `model`'s table: `build()` returns the queryset and the keyword arguments
    of its `.update()`, with `Param`s where values change; `run(**values)` executes it with
    those values and returns the number of rows it matched, as `.update()` does. Compiled at
    its first run on each database."""

    def __init__(
        self, model: type[Model], build: Callable[[], tuple[QuerySet, dict[str, Any]]]
    ) -> None:
        self._model = model
        self._build = build
        self._compiled: dict[tuple[str, str], tuple[str, list]] = {}

    def run(self, **values: Any) -> int:
        using = router.db_for_write(self._model)
        connection = connections[using]
        sql, template = self.compiled(using)
        params = [
            item.prepared(values[item.name], connection) if isinstance(item, Param) else item
            for item in template
        ]
        # As `.update()`: an error inside a caller's transaction marks it for rollback.
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            if _prepares(connection):
                return _run_prepared(connection, cursor, sql, params)
            cursor.execute(sql, params)
            return cursor.rowcount

    def compiled(self, using: str) -> tuple[str, list]:
        """The SQL and the parameter template (`Param`s in it) of the UPDATE on `using`."""
        # Keyed by the backend too: a test may point an alias at another database.
        key = (using, connections[using].vendor)
        if key not in self._compiled:
            self._compiled[key] = self._compile(using)
        return self._compiled[key]

    def _compile(self, using: str) -> tuple[str, list]:
        queryset, changes = self._build()
        assert queryset.model is self._model, "the queryset updates the model's table"
        # What `QuerySet.update()` builds before it executes.
        query = queryset.query.chain(UpdateQuery)
        assert isinstance(query, UpdateQuery)
        query.add_update_values(changes)
        query.clear_select_clause()
        assert not query.get_related_updates(), "one table's UPDATE: one statement"
        sql, params = query.get_compiler(using).as_sql()
        return sql, list(params)


def model_field(model: type[Model], name: str) -> Field:
    """The field a `Param` compared with or stored in `model.name` is prepared as: a foreign
    key's value is its target's (the primary key of the row it points at)."""
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return getattr(field, "target_field", field)


def _prepares(connection) -> bool:
    """Whether the UPDATE runs as a statement prepared on the server session: on PostgreSQL,
    with DB_PREPARED_UPDATES on, in autocommit (a failed EXECUTE is then run again as a
    PREPARE and EXECUTE; inside a caller's transaction it could not be). With server-side
    binding, psycopg prepares a statement run often by itself."""
    return (
        connection.vendor == "postgresql"
        and settings.DB_PREPARED_UPDATES
        and not connection.in_atomic_block
        and connection.get_autocommit()
        and not connection.settings_dict["OPTIONS"].get("server_side_binding")
    )


def _run_prepared(connection, cursor, sql: str, params: list) -> int:
    """Run `sql` as a statement prepared on the server session, PostgreSQL parsing and planning
    it once per session instead of at every run (docs/performance.md, figure 15m).

    The SQL forms `PREPARE` and `EXECUTE` keep the driver's client-side binding and one simple
    query per run, so a caller's execute wrapper may still append a statement to it. Safe behind
    a transaction pooler (PgBouncer), which may hand each query another server session: a
    session without the statement answers 26000, and the statement is then prepared and run in
    one query string (one transaction, so one server session); a session that already has it
    (prepared there by another client of the pooler: the name is the SQL's hash, so it is the
    same statement) answers 42P05 to the PREPARE, and the EXECUTE alone runs.
    """
    name = "messages_" + hashlib.sha256(sql.encode()).hexdigest()[:20]
    prepared = _prepared.setdefault(connection.connection, set())
    arguments = f"({', '.join(['%s'] * len(params))})" if params else ""
    execute = f"EXECUTE {name}{arguments}"
    if name in prepared:
        try:
            cursor.execute(execute, params)
            return cursor.rowcount
        except DatabaseError as error:
            if _sqlstate(error) != _NOT_PREPARED:
                raise
            prepared.discard(name)
    # The ORM's placeholders as PostgreSQL's ($1, $2...); `%` escaped again for the driver.
    numbered = sql % tuple(f"${number}" for number in range(1, len(params) + 1))
    prepare = f"PREPARE {name} AS {numbered}".replace("%", "%%")
    try:
        cursor.execute(f"{prepare}; {execute}", params)
    except DatabaseError as error:
        if _sqlstate(error) != _ALREADY_PREPARED:
            raise
        cursor.execute(execute, params)
        prepared.add(name)
        return cursor.rowcount
    prepared.add(name)
    # The PREPARE's result first, then the EXECUTE's (its row count).
    cursor.nextset()
    return cursor.rowcount


def _sqlstate(error: DatabaseError) -> str | None:
    """The SQLSTATE of the driver's error Django wrapped."""
    return getattr(error.__cause__, "sqlstate", None)
