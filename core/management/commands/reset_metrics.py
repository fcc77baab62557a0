"""`manage.py reset_metrics`: empty PROMETHEUS_MULTIPROC_DIR before the whole service starts."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Delete the metric files of PROMETHEUS_MULTIPROC_DIR. Run it once before web and "
        "workers start (compose's migrate step, `make run`), never while they run: their "
        "counts would be lost."
    )

    def handle(self, *args, **options):
        if not settings.PROMETHEUS_MULTIPROC_DIR:
            self.stdout.write("PROMETHEUS_MULTIPROC_DIR is not set: nothing to reset.")
            return
        # Only the library's own files: a directory set by mistake keeps everything else.
        files = list(Path(settings.PROMETHEUS_MULTIPROC_DIR).glob("*.db"))
        for path in files:
            path.unlink(missing_ok=True)
        self.stdout.write(f"{len(files)} metric file(s) deleted.")
