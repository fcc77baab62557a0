"""Run a command and start it again when it dies: `python -m messages.respawn COMMAND...`.

The Procfile's workers run under it, because honcho (`make run`) stops every process when
one exits: a worker lost to a crash would take the web and beat down with it. A command that
fails soon after it started (a wrong setting) is not started again: after three such failures
in a row it exits with the command's status, and honcho stops, as before. SIGTERM and SIGINT
are passed on to the command (once), whose exit this waits for.
"""

import signal
import subprocess
import sys
import time

# A run shorter than this that fails is a failure to start, not a crash.
STARTUP_SECONDS = 10.0
STARTUP_FAILURES = 3
PAUSE_SECONDS = 2.0


def main(command: list[str]) -> int:
    """Run `command` until it exits on its own with 0, is told to stop, or cannot start."""
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed_starts = 0
    while not stopping:
        started = time.monotonic()
        # A session of its own: a stop signalled to our whole process group (honcho's, Ctrl-C)
        # reaches the command once, through `stop`. Signalled twice, a Celery worker's second
        # SIGTERM cuts its warm shutdown short and it dies by the signal.
        child = subprocess.Popen(command, start_new_session=True)  # noqa: S603 - the Procfile's
        status = child.wait()
        if stopping or status == 0:
            return status
        failed_starts = failed_starts + 1 if time.monotonic() - started < STARTUP_SECONDS else 0
        if failed_starts >= STARTUP_FAILURES:
            print(f"respawn: {command[0]} failed {failed_starts} times at start", flush=True)
            return status
        print(
            f"respawn: {command[0]} exited with status {status}; starting it again",
            flush=True,
        )
        time.sleep(PAUSE_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
