"""Figure 3: SQL queries of one user's sync for 1, 50 and 500 entitled domains."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench.data import create_users
from core.entitlements import sync_user_entitlements

DOMAIN_COUNTS = (1, 50, 500)


def queries_per_sync(*, domain_counts=DOMAIN_COUNTS) -> dict[str, int]:
    """Queries of a first sync (every access granted) and of a second one (nothing changed)."""
    figures = {}
    for count in domain_counts:
        [user] = create_users(kind="queries", indexes=range(count, count + 1), domains_each=count)
        for label in ("", "_unchanged"):
            with CaptureQueriesContext(connection) as captured:
                result = sync_user_entitlements(user_id=user.pk, trigger="bench")
            if label == "" and len(result.added) != count:
                raise RuntimeError(f"sync granted {len(result.added)} domains, not {count}")
            figures[f"queries_per_sync{label}_{count}"] = len(captured.captured_queries)
    return figures
