"""Bulk writes of plain rows (dicts by field name, no model instances): one statement each.

On PostgreSQL every row goes in ONE JSON parameter that `jsonb_populate_recordset` expands
into rows of the table's own type, so a write of 50 rows is one statement the server plans
once, and building it costs the worker one `json.dumps` instead of a model instance and a
bound parameter per value. The embedded SQLite falls back to `executemany` (one statement
per row, in one call). Tables, columns and their defaults come from the model's `_meta`.
"""

import datetime
import decimal
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from django.db import connections, models, router
from django.utils import timezone

Row = Mapping[str, Any]


def insert_rows(
    model: type[models.Model], rows: Sequence[Row], *, ignore_conflicts: bool = False
) -> None:
    """Insert `rows`, keyed by field attname (`user_id`); absent fields take their default.

    auto_now and auto_now_add fields absent from a row take the time of the call. With
    `ignore_conflicts`, a row that breaks a unique constraint is skipped, as bulk_create's.
    """
    if not rows:
        return
    meta = model._meta
    fields = [field for field in meta.concrete_fields if not field.db_returning]
    # A misspelt name would silently leave its column at the default.
    if unknown := rows[0].keys() - {field.attname for field in fields}:
        raise ValueError(f"{model.__name__} has no columns {sorted(unknown)}")
    filled = _with_defaults(rows, fields)
    connection = _connection(model)
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    columns = ", ".join(quote(_column(field)) for field in fields)
    conflicts = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Names come from the model, quoted; the rows are one bound parameter.
            sql = (
                f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608
                f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb){conflicts}"
            )
            cursor.execute(sql, [_json(filled, fields)])
            return
        placeholders = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}){conflicts}"  # noqa: S608
        _execute_each(cursor, sql, [_prepared(row, fields, connection) for row in filled])


def update_rows(model: type[models.Model], rows: Iterable[Row]) -> None:
    """Set each row's fields (by attname) on the table row of the same primary key.

    Every row holds the primary key (by its attname: `user_id` for a sync state). Rows that
    set the same fields share one statement; like QuerySet.update, auto_now fields are not
    touched. On PostgreSQL the keys are also passed as an array (`= ANY(%s)`), so the table's
    rows are found through its primary key's index.
    """
    meta = model._meta
    key = meta.pk.attname
    by_fields: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in rows:
        by_fields[tuple(name for name in row if name != key)].append(row)
    connection = _connection(model)
    for names, same_fields in by_fields.items():
        fields = [meta.get_field(name) for name in names]
        _update(model, same_fields, fields=fields, connection=connection)


def _update(model, rows: list[Row], *, fields: list, connection) -> None:
    """One UPDATE (one executemany on SQLite) setting `fields` of `rows`."""
    key_field = model._meta.pk
    quote = connection.ops.quote_name
    table, key = quote(model._meta.db_table), quote(_column(key_field))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            assignments = ", ".join(f"{quote(_column(f))} = r.{quote(_column(f))}" for f in fields)
            sql = (
                f"UPDATE {table} SET {assignments} "  # noqa: S608
                f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS r "
                f"WHERE {table}.{key} = r.{key} AND {table}.{key} = ANY(%s)"
            )
            keys = [key_field.get_db_prep_value(row[key_field.attname], connection) for row in rows]
            cursor.execute(sql, [_json(rows, [*fields, key_field]), keys])
            return
        assignments = ", ".join(f"{quote(_column(field))} = %s" for field in fields)
        sql = f"UPDATE {table} SET {assignments} WHERE {key} = %s"  # noqa: S608
        _execute_each(
            cursor, sql, [_prepared(row, [*fields, key_field], connection) for row in rows]
        )


def _execute_each(cursor, sql: str, parameters: list[list]) -> None:
    """The statement once per row of parameters: executemany, or execute for one row."""
    if len(parameters) == 1:
        cursor.execute(sql, parameters[0])
    else:
        cursor.executemany(sql, parameters)


def _with_defaults(rows: Sequence[Row], fields: list) -> list[Row]:
    """The rows with every field of `fields`, absent ones at their default."""
    now = timezone.now()
    constant, per_row = {}, {}
    for field in fields:
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            constant[field.attname] = now
        elif field.has_default() and callable(field.default):
            per_row[field.attname] = field.default  # uuid4, dict, list: a new value per row
        else:
            constant[field.attname] = field.get_default()
    return [{**constant, **{name: make() for name, make in per_row.items()}, **row} for row in rows]


def _column(field) -> str:
    # A field attached to its model has its column (the hints allow None before that).
    return cast(str, field.column)


def _json(rows: Sequence[Row], fields: Sequence) -> str:
    """The rows as one JSON array of objects keyed by column, as jsonb_populate_recordset reads.

    A JSONField's value is nested as it is; the other values are written as PostgreSQL reads
    their text (uuid, timestamptz in ISO 8601 with its offset, numeric).
    """
    columns = [(field.attname, _column(field)) for field in fields]
    objects = [{column: row[name] for name, column in columns} for row in rows]
    return json.dumps(objects, default=_json_value, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    """What json.dumps cannot write by itself (called per value: the commonest types first)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the columns are timestamps with time zone")
        return value.isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value")


def _prepared(row: Row, fields: Sequence, connection) -> list:
    """The row's values of `fields`, as the database's driver takes them."""
    return [field.get_db_prep_save(row[field.attname], connection) for field in fields]


def _connection(model: type[models.Model]):
    """The connection the model's writes go to."""
    return connections[router.db_for_write(model)]
