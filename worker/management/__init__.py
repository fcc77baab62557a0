"""Management commands of the Celery plumbing."""
