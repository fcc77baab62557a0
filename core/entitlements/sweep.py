"""The sweep beat sends every minute: what was recorded and never finished gets done."""

from core.entitlements.runs import close_lost_runs
from core.entitlements.sync_requests import enqueue_outstanding_requests


def sweep() -> int:
    """Close the runs whose batches were lost, then enqueue every recorded sync request that
    no sync served (e.g. the broker was down); return how many requests were sent."""
    close_lost_runs()
    return enqueue_outstanding_requests()
