"""Names of the run's own on the shared servers (RabbitMQ vhosts, extra databases), beside its
test database: after the database of DATABASE_URL (`make test`: the checkout's), and the
pytest-xdist worker (gw0, gw1...) when there is one, so workers never share them."""

import os
from urllib.parse import urlsplit


def own_name(purpose: str) -> str:
    """e.g. messages_2900350528_gw0_test for purpose "test"."""
    base = urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "messages"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return "_".join(part for part in (base, worker, purpose) if part)
