"""core/metrics.py: what the sync records, with bounded labels; a multiprocess directory that
cannot be made names its variable."""

import os
import subprocess
import sys
from pathlib import Path

from core import metrics
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE, SIGNALS_QUEUE

NS = "messages_entitlements"


def test_a_label_value_outside_its_set_is_recorded_as_other():
    other = metrics.SYNCS.labels("other", "ok")
    before = other._value.get()

    metrics.sync_ended(trigger="jane.doe@example.org", status="ok")

    assert other._value.get() == before + 1
    labels = {sample.labels["trigger"] for sample in metrics.SYNCS.collect()[0].samples}
    assert not any("@" in label for label in labels)


def test_the_queues_are_the_workers():
    assert metrics.QUEUES == (INTERACTIVE_QUEUE, BULK_QUEUE, SIGNALS_QUEUE)


def test_the_answer_labels_are_the_answer_kinds():
    from core.entitlements.backends.base import AnswerKind

    assert set(metrics.ANSWERS) == set(AnswerKind)


def test_a_directory_that_cannot_be_made_names_its_variable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    completed = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); import core.metrics"],
        cwd=Path(__file__).resolve().parents[1],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "messages.settings",
            "DJANGO_SECRET_KEY": "test-secret",
            "DATA_DIR": str(tmp_path),
            "PROMETHEUS_MULTIPROC_DIR": str(blocker / "metrics"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode != 0
    assert "ImproperlyConfigured: PROMETHEUS_MULTIPROC_DIR: cannot create" in completed.stderr
