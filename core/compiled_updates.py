"""UPDATE statements spelled with the ORM, turned into SQL once per process and run many times.

Building a conditional UPDATE costs the ORM ~0.7-0.8 ms of CPU (Q objects, lookups, compilation),
more than a login's whole round trip to PostgreSQL. A `CompiledUpdate` asks the ORM for the
statement once, with each changing value standing in as a `Param`, keeps the SQL and its
parameter list, and then only fills the parameters in. The querysets stay the one spelling of
each condition (`core.querysets`); this module never writes SQL of its own.
"""

from collections.abc import Callable
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Field, Model, QuerySet, Value
from django.db.models.sql import UpdateQuery


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
