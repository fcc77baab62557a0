"""The run's page in the admin draws the run: users whose sync ended over time, and its users
by run category from the run's counters."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from core.admin.run_chart import HEIGHT
from tests.factories import EntitlementSyncStateFactory, SyncRunFactory

PLOT_TOP, PLOT_HEIGHT = 12, HEIGHT - 12 - 28


pytestmark = pytest.mark.usefixtures("fast_password_hasher")


def polylines(html: str) -> dict[str, list[tuple[float, float]]]:
    """The chart's curves by colour, as (x, y) points."""
    return {
        colour: [tuple(map(float, point.split(","))) for point in points.split()]
        for colour, points in re.findall(
            r'<polyline[^>]*stroke="(#\w+)"[^>]*points="([^"]+)"', html
        )
    }


def users_at(y: float, top: int) -> int:
    """The count a curve's point stands for (points are drawn to a tenth of a pixel)."""
    return round(top * (1 - (y - PLOT_TOP) / PLOT_HEIGHT))


def test_the_run_page_draws_the_users_done_over_time_and_by_run_category(admin_client, db):
    end = timezone.now()
    start = end - timedelta(minutes=10)
    run = SyncRunFactory(
        users_enqueued=40,
        users_done=30,
        users_changed=10,
        users_failed=6,
        users_skipped=4,
        finished_at=end,
    )
    run.started_at = start
    run.save(update_fields=["started_at"])
    # 36 users ended in the run, one every 8 s from 5 s on; 6 of them failed.
    for index in range(36):
        EntitlementSyncStateFactory(
            last_trigger="periodic",
            finished_at=start + timedelta(seconds=5 + index * 8),
            status="unavailable" if index % 6 == 0 else "ok",
        )
    # Not the run's: a login in its window, a periodic sync before it.
    EntitlementSyncStateFactory(last_trigger="login", finished_at=start + timedelta(minutes=1))
    EntitlementSyncStateFactory(last_trigger="periodic", finished_at=start - timedelta(minutes=1))

    html = admin_client.get(reverse("admin:core_syncrun_change", args=[run.pk])).content.decode()

    curves = polylines(html)
    done, failed = curves["#3b6fb6"], curves["#c2453a"]
    assert users_at(done[-1][1], 40) == 36
    assert users_at(failed[-1][1], 40) == 6
    # Half the time: every user had ended (they all did in the first five minutes).
    assert users_at(done[len(done) // 2][1], 40) == 36
    # A quarter of the time (150 s): the users who ended at 5, 13, ... 149 s.
    assert users_at(done[len(done) // 4][1], 40) == 19
    assert users_at(done[0][1], 40) == 0
    assert [y for _, y in done] == sorted((y for _, y in done), reverse=True)
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())
    for category in ("unchanged 20", "changed 10", "failed 6", "skipped 4"):
        assert category in text
    assert "36 of 40 counted users on the curve" in html
    assert "10 min 0 s" in text


def test_a_run_with_nothing_counted_yet_draws_an_empty_chart(admin_client, db):
    run = SyncRunFactory(status="running", finished_at=None)

    page = admin_client.get(reverse("admin:core_syncrun_change", args=[run.pk]))

    assert page.status_code == 200
    assert 'class="run-chart"' in page.content.decode()
