"""Migrate the test database to given migrations, and back to the newest ones after."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets):
    """Apply or unapply migrations up to `targets`; the apps as they stand there."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def migrate_to_latest() -> None:
    """Where the database must be left for the tests that follow."""
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
