"""A user's round of change signals: one settled ask and one recheck serve a whole burst.

DeployCenter sends one webhook per save, and a bulk change saves a user many times. A user's
first signal opens a round: its settled sync is requested (due after the settle delay). Every
further signal joins the round instead of requesting a sync of its own:

- while the settled sync waits, it serves the signal;
- once it has asked, the round's recheck serves it (a signal that came after the ask must lead
  to a later ask, whatever that ask found);
- the recheck waits for the user's signals to pause: it asks ENTITLEMENTS_CHANGE_RECHECK_SECONDS
  after the later of the settled ask and the last signal, so every signal it serves had that
  long to become visible (DeployCenter commits after its webhook returned), but no later than
  RECHECK_CAP recheck delays after the settled ask, so an endless burst is still asked;
- a signal that comes while the recheck asks, or that the capped recheck asked too soon for,
  opens the next round once the recheck ended.

So a burst costs each user two upstream calls however long it lasts (up to the cap), and no
signal is left without an ask at least the settle delay after it. A signal alone whose settled
sync changed the rights ends its round there (one call), as before.

The round lives in the cache (two keys a user, which expire): a signal costs the endpoint one
write and one add there, and no database write unless it opens a round. A round whose sync was
lost (a worker killed) expires; meanwhile the sweep sends the request recorded on the user's row.
"""

import enum
import math
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

# A recheck waits for a pause in the user's signals at most this many recheck delays after the
# settled ask (5 minutes with the defaults).
RECHECK_CAP = 15


class Phase(enum.StrEnum):
    """Which of a round's two asks a change signal's sync is (its task's `signal_phase`)."""

    SETTLE = "settle"
    RECHECK = "recheck"


class _State(enum.StrEnum):
    SETTLE_WAITING = "settle_waiting"
    SETTLE_ASKED = "settle_asked"
    RECHECK_WAITING = "recheck_waiting"
    RECHECK_ASKING = "recheck_asking"


@dataclass(frozen=True, slots=True)
class RecheckPlan:
    """What a round asks next: a sync of `phase` due in `delay_seconds`."""

    phase: Phase
    delay_seconds: float


def join_or_open(*, user_id: uuid.UUID | str, now: float) -> bool:
    """Record a user's signal; True when it opens a round (its settled sync must be requested).

    The signal's time is written before the round is looked at: a round that ends meanwhile
    reads it and serves it (`settled_ask_ended`, `recheck_ended`), or this call opens the next.
    """
    cache.set(_last_key(user_id), now, timeout=_expiry())
    return cache.add(_round_key(user_id), {"state": _State.SETTLE_WAITING}, timeout=_expiry())


def abandon(*, user_id: uuid.UUID | str) -> None:
    """Forget a round whose settled sync could not be requested (the next signal opens one)."""
    cache.delete(_round_key(user_id))


def settled_ask_starting(*, user_id: uuid.UUID | str, now: float) -> None:
    """The round's settled sync is about to ask: later signals wait for the recheck."""
    cache.set(
        _round_key(user_id), {"state": _State.SETTLE_ASKED, "asked_at": now}, timeout=_expiry()
    )


def settled_ask_ended(
    *, user_id: uuid.UUID | str, asked_at: float, changed: bool, now: float
) -> RecheckPlan | None:
    """The round's recheck, if it needs one, after its settled sync asked at `asked_at`.

    Needed when that answer changed nothing (the change may not have been committed yet), or
    when a signal came less than the settle delay before the ask or after it: its change may
    not have been visible to it. Not needed: the round ends, and the next signal opens another.
    """
    settle = settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
    recheck = settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    waiting = {"state": _State.RECHECK_WAITING, "asked_at": asked_at}
    if not changed or _last_signal(user_id, default=0.0) > asked_at - settle:
        cache.set(_round_key(user_id), waiting, timeout=_expiry())
    else:
        # End the round first, then read the last signal: one that joined before the end is
        # read here; one after it opened a round of its own.
        cache.delete(_round_key(user_id))
        if _last_signal(user_id, default=0.0) <= asked_at - settle:
            return None
        if not cache.add(_round_key(user_id), waiting, timeout=_expiry()):
            return None
    last = _last_signal(user_id, default=asked_at)
    return RecheckPlan(Phase.RECHECK, max(0.0, max(asked_at, last) + recheck - now))


def recheck_is_next(*, user_id: uuid.UUID | str) -> bool:
    """Whether the user's round waits for (or is making) its recheck, rather than its
    settled ask; no round: a sync that comes is a settled ask."""
    state = cache.get(_round_key(user_id)) or {}
    return state.get("state") in (_State.RECHECK_WAITING, _State.RECHECK_ASKING)


def recheck_starting(*, user_id: uuid.UUID | str, now: float) -> float:
    """Seconds the round's recheck must still wait for the user's signals to pause; 0: it asks
    now (the round then serves no further signal: they open the next)."""
    state = cache.get(_round_key(user_id)) or {}
    asked_at = state.get("asked_at", now)
    recheck = settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    due = min(_last_signal(user_id, default=0.0) + recheck, asked_at + RECHECK_CAP * recheck)
    # Slack for the broker's countdown, which is not exact: a tenth of the delay (a second at
    # most), so the user has been quiet for most of it when the recheck asks.
    if due - now > min(1.0, recheck / 10):
        return due - now
    cache.set(
        _round_key(user_id), {"state": _State.RECHECK_ASKING, "asked_at": now}, timeout=_expiry()
    )
    return 0.0


def recheck_ended(*, user_id: uuid.UUID | str, asked_at: float, now: float) -> RecheckPlan | None:
    """End the round; the next round's settled sync when a signal came after the recheck asked
    or less than the settle delay before it (a capped recheck asks during a burst)."""
    cache.delete(_round_key(user_id))
    last = _last_signal(user_id, default=0.0)
    settle = settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
    if last <= asked_at - settle:
        return None
    if not cache.add(_round_key(user_id), {"state": _State.SETTLE_WAITING}, timeout=_expiry()):
        return None  # a signal opened it, and requested its settled sync
    return RecheckPlan(Phase.SETTLE, max(0.0, last + settle - now))


def end_without_ask(*, user_id: uuid.UUID | str) -> None:
    """End the round of a sync that could not ask (the upstream down, the user's lock held
    through every retry): what it owed is left to the sweep and the periodic run."""
    cache.delete(_round_key(user_id))


def _last_signal(user_id, *, default: float) -> float:
    return cache.get(_last_key(user_id), default)


def _expiry() -> int:
    """How long a round's keys live: beyond its longest recheck and the sweep's grace."""
    recheck = settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    return math.ceil(
        settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
        + (RECHECK_CAP + 1) * recheck
        + settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS
    )


def _round_key(user_id) -> str:
    return f"change-signal:round:{user_id}"


def _last_key(user_id) -> str:
    return f"change-signal:last:{user_id}"
