"""Root pytest configuration: Celery's classic in-process fixtures (pytest-celery's Docker
fixtures cannot run here)."""

pytest_plugins = ("celery.contrib.pytest",)
