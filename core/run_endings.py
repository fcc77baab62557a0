"""Why a resync run ended the way it did, by its error code, in the words the admin and the
command use."""

from django.conf import settings

# By error code; `{stall}` is ENTITLEMENTS_RUN_STALL_SECONDS.
RUN_ENDINGS = {
    "incomplete": (
        "No batch of this run reported for {stall} s: its tasks were lost (e.g. the broker "
        "restarted without its data) or expired unrun. It was closed as failed so that the "
        "next run could go ahead; that run covers its users."
    ),
    "configuration": (
        "The upstream refused our configuration (API key or service id): the run stopped at "
        "the first refusal and asked nobody else. Fix ENTITLEMENTS_BACKEND_PARAMETERS, restart "
        "the workers and start a run."
    ),
    "fanout_failed": (
        "Not every batch could be sent (the broker could not be reached): the users counted "
        "were sent, the others were not asked. The next run covers them."
    ),
    "fanout_interrupted": (
        "The task sending this run's batches was stopped before it sent them all (its worker "
        "was killed, or lost its broker connection) and was delivered again: the copy closed "
        "this run and started a new one over every user. This run's batches that had not run "
        "by then asked no one (counted not run)."
    ),
    "revocations_held": (
        "The run reached its revocation budget: its further revocations are held for an "
        "operator (see its held revocations)."
    ),
}


def why_run_ended(*, error_code: str) -> str:
    """The explanation of a run's error code; "" for a code without one (or none)."""
    ending = RUN_ENDINGS.get(error_code, "")
    return ending.format(stall=settings.ENTITLEMENTS_RUN_STALL_SECONDS)
