"""A real database failure under a request: this process's PostgreSQL session killed."""

import psycopg
from django.db import connection

# What an error page must never show after a database failure.
DATABASE_FAILURE_MARKERS = (
    "OperationalError",
    "InterfaceError",
    "terminat",
    "connection",
    "psycopg",
    "Traceback",
    'File "',
    "SELECT",
)


def kill_database_connection() -> None:
    """Terminate this process's PostgreSQL session from another one, as a crash or a failover
    would: the next query of the request fails for real."""
    connection.ensure_connection()
    backend_pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
