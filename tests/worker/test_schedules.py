"""The beat schedule: created at migrate time, once, and left to the operators afterwards."""

import json

import pytest
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from worker.schedules import FULL_RESYNC_NAME, SWEEP_NAME

pytestmark = pytest.mark.django_db


def migrate():
    call_command("migrate", verbosity=0, interactive=False)


def test_migrate_creates_the_full_resync_and_the_sweep(settings):
    resync = PeriodicTask.objects.get(name=FULL_RESYNC_NAME)
    assert resync.task == "entitlements.sync_all_admins"
    assert json.loads(resync.kwargs) == {"trigger": "periodic"}
    assert (resync.interval.every, resync.interval.period) == (
        settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS,
        IntervalSchedule.SECONDS,
    )
    assert resync.expire_seconds == settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS
    assert resync.enabled

    sweep = PeriodicTask.objects.get(name=SWEEP_NAME)
    assert sweep.task == "entitlements.sweep_pending_syncs"
    assert (sweep.interval.every, sweep.interval.period) == (60, IntervalSchedule.SECONDS)


def test_migrating_again_creates_nothing_more():
    tasks, intervals = PeriodicTask.objects.count(), IntervalSchedule.objects.count()

    migrate()
    migrate()

    assert PeriodicTask.objects.filter(name=FULL_RESYNC_NAME).count() == 1
    assert (PeriodicTask.objects.count(), IntervalSchedule.objects.count()) == (tasks, intervals)


def test_migrate_keeps_an_operators_edits(settings):
    resync = PeriodicTask.objects.get(name=FULL_RESYNC_NAME)
    resync.interval = IntervalSchedule.objects.create(every=4, period=IntervalSchedule.HOURS)
    resync.enabled = False
    resync.kwargs = json.dumps({"trigger": "nightly"})
    resync.save()
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 600

    migrate()

    resync.refresh_from_db()
    assert (resync.interval.every, resync.interval.period) == (4, IntervalSchedule.HOURS)
    assert not resync.enabled
    assert json.loads(resync.kwargs) == {"trigger": "nightly"}


def test_a_deleted_schedule_comes_back_at_the_next_migrate():
    PeriodicTask.objects.filter(name=SWEEP_NAME).delete()

    migrate()

    assert PeriodicTask.objects.filter(name=SWEEP_NAME).exists()
