"""Celery plumbing: task definitions, retry policy, locks, queues and schedules."""
