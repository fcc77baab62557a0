"""Helpers shared by test packages: waiting, private Redis servers, worker subprocesses."""

from tests.support.redis_server import PrivateRedis
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_environment

__all__ = ("PrivateRedis", "WorkerProcess", "wait_until", "worker_environment")
