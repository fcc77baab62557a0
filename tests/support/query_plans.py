"""The plans of captured SQL statements, and the scans in them that read a whole table.

Used by tests/entitlements/test_batch_queries_at_scale.py (on tables of 20,000 users) and by
`python -m bench.million` (on a million).
"""

import json
import re

from django.db import connection, transaction

# Statements EXPLAIN accepts; BEGIN, COMMIT, SAVEPOINT... are not plans.
EXPLAINABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
# How CaptureQueriesContext records an executemany: the statement with its %s placeholders.
_EXECUTEMANY = re.compile(r"^(\d+) times: (.*)$", re.DOTALL)
_SCANS = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"})


def explainable(sql: str) -> bool:
    """Whether the captured statement (or executemany) is one EXPLAIN can plan."""
    many = _EXECUTEMANY.match(sql)
    statement = many[2] if many else sql
    return statement.lstrip().upper().startswith(EXPLAINABLE)


def explain(sql: str) -> dict:
    """The plan of a captured statement, not run (no ANALYZE), as EXPLAIN's JSON root node.

    An executemany is planned as PostgreSQL plans it for any parameters (its generic plan).
    """
    many = _EXECUTEMANY.match(sql)
    with transaction.atomic(), connection.cursor() as cursor:
        if many:
            parts = many[2].split("%s")
            numbered = "".join(
                part + (f"${number}" if number < len(parts) else "")
                for number, part in enumerate(parts, start=1)
            )
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE captured_statement AS {numbered}")
            nulls = ", ".join(["NULL"] * (len(parts) - 1))
            try:
                cursor.execute(f"EXPLAIN (FORMAT JSON) EXECUTE captured_statement({nulls})")
                [[result]] = cursor.fetchall()
            finally:
                cursor.execute("DEALLOCATE captured_statement")
        else:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
            [[result]] = cursor.fetchall()
    if isinstance(result, str):
        result = json.loads(result)
    return result[0]["Plan"]


def nodes(plan: dict) -> list[dict]:
    """Every node of a plan, the root first."""
    found = [plan]
    for child in plan.get("Plans", ()):
        found += nodes(child)
    return found


def table_rows() -> dict[str, int]:
    """The planner's row count of every table (as of the last ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples::bigint FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        )
        return dict(cursor.fetchall())


def whole_table_scans(plan: dict, *, rows: dict[str, int], large: int) -> list[str]:
    """The scans that read a whole table of at least `large` rows (by `rows`, table_rows()):
    sequential, or through an index without an index condition (read end to end), as
    "<node> on <table>"."""
    return [
        f"{node['Node Type']} on {node['Relation Name']}"
        for node in nodes(plan)
        if node["Node Type"] in _SCANS
        and (node["Node Type"] == "Seq Scan" or "Index Cond" not in node)
        and rows.get(node.get("Relation Name", ""), 0) >= large
    ]
