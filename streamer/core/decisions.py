"""The stream's decisions about each event, written once for the single process and the distributed mode.

Before an event changes anything, four questions are answered in this order, and each answer depends on every
event before it, across all accounts:

1. Are its DIDs storable (:func:`~streamer.core.state.storable_did`: the actor's, and the subject's of a kind that
   draws attention)? If not: ``bad_did``.
2. Is its time a time at all (0 <= t < 2^63 µs)? If not: ``late`` (before 1970) or ``future_time``.
3. Does it move the window? The :class:`~streamer.core.watermark.Watermark` observes it; when its head moves, the
   :class:`~streamer.core.watermark.Advance` comes with the decision (and comes first: buckets expire before the
   event is judged or folded). Then the watermark judges it: ``late`` or ``future_time`` against the window and
   the receive clock.
4. Is an account inactive? An ``#account`` event with ``active: false`` deactivates its actor (the deactivated
   DIDs are this object's, with the time), ``active: true`` reactivates it; an inactive account's events are
   ``deactivated``, and an event towards one keeps its author's activity but loses its subject (``no_subject``).

:class:`Decider` holds what these answers depend on (the watermark and the inactive accounts) and
:meth:`Decider.decide` gives them as one :class:`Decision`. :class:`~streamer.core.state.AgentState` folds an event
after its decision, and the distributed ingest's :class:`~streamer.distributed.sequencer.StreamSequencer` writes the
decision into ``skyattr.events`` for the workers to fold: both call this one method, so the two modes decide alike
by construction. What each does with a decision (expire buckets, drop an account's keys, step the schedule) is its
own; when runs fall due is :func:`streamer.core.schedule.step`, shared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.core.events import ACCOUNT, DELETE, Event
from streamer.core.watermark import FUTURE_TIME, LATE, MAX_TIME_US, Advance, Watermark

BAD_DID = "bad_did"
DEACTIVATED = "deactivated"  # by an account whose last #account event said active: false
MAX_DID_CHARS = 2048  # the atproto limit on a DID's length


def storable_did(did: object) -> bool:
    """Whether a DID may be interned: a non-empty string of at most ``MAX_DID_CHARS`` printable characters. That
    excludes control characters, lone surrogates (not encodable as UTF-8) and format characters, so every
    interned DID is plain text a checkpoint stores and reads back exactly. Syntax is the decoder's business."""
    return isinstance(did, str) and 0 < len(did) <= MAX_DID_CHARS and did.isprintable()


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Decider.decide` answered: ``reason`` when the event is refused (None: accepted), ``moved`` when
    it moved the window first, ``account`` (``deactivated`` or ``reactivated``) when it changed an account's
    standing, ``no_subject`` when its subject is inactive (the author's activity counts, the edge does not)."""

    reason: str | None = None
    moved: Advance | None = None
    account: str = ""
    no_subject: bool = False


ACCEPTED = Decision()  # the common answer, not allocated per event
_REFUSED = {reason: Decision(reason) for reason in (BAD_DID, LATE, FUTURE_TIME, DEACTIVATED)}


class Decider:
    """See the module doc. ``attention_kinds``: the kinds whose subject is an attention edge (weight > 0).
    ``deactivated``: DID → event time of its deactivation, while inactive (saved with the state or the cursor)."""

    def __init__(self, watermark: Watermark, attention_kinds: frozenset[str]) -> None:
        self.watermark = watermark
        self.attention_kinds = attention_kinds
        self.deactivated: dict[str, int] = {}

    def decide(self, event: Event, now_us: int | None = None, known: dict[str, int] | None = None) -> Decision:
        """The answers for ``event``, in stream order (see the module doc); ``now_us``: the receive clock of a live
        source; ``known``: DIDs already interned (storable by construction: a cheaper check)."""
        actor = event.actor
        subject = event.subject if event.kind in self.attention_kinds else ""
        if (known is None or actor not in known) and not storable_did(actor):
            return _REFUSED[BAD_DID]
        if subject and (known is None or subject not in known) and not storable_did(subject):
            return _REFUSED[BAD_DID]
        t = event.time_us
        if not 0 <= t < MAX_TIME_US:  # nothing real is dated before 1970; beyond int64 is no date at all
            return _REFUSED[LATE if t < 0 else FUTURE_TIME]
        wm = self.watermark
        moved = wm.observe(t)
        reason = wm.judge(t, now_us)
        if reason is not None:
            return Decision(reason, moved) if moved is not None else _REFUSED[reason]
        account = ""
        no_subject = False
        active = (event.extra or {}).get("active") if event.kind == ACCOUNT else None
        if active is False:
            self.deactivated[actor] = t
            account = "deactivated"
        elif self.deactivated:
            if active is True:
                if self.deactivated.pop(actor, None) is not None:
                    account = "reactivated"
            elif actor in self.deactivated:
                return Decision(DEACTIVATED, moved) if moved is not None else _REFUSED[DEACTIVATED]
            elif subject and subject in self.deactivated:
                no_subject = True
        if moved is None and not account and not no_subject:
            return ACCEPTED
        return Decision(None, moved, account, no_subject)


def leaves_trace(
    event: Event, decision: Decision, activity_kinds: frozenset[str], attention_kinds: frozenset[str]
) -> bool:
    """Whether an accepted event leaves a trace in its bucket: activity of a counted kind, or an attention edge to
    another, active account. An edit, a delete (it takes back from its create's bucket), an account's deactivation
    and self-attention of an uncounted kind leave none. A bucket holds events exactly when one of them left a
    trace; when such a bucket leaves the window, the accounts left without any trace are forgotten, in a single
    process (whose state has no bucket otherwise) and in the partitions (told by the sequencer) alike."""
    kind = event.kind
    if decision.account == "deactivated" or event.operation == "update" or kind == DELETE:
        return False
    if kind in activity_kinds:
        return True
    subject = event.subject
    return kind in attention_kinds and not decision.no_subject and bool(subject) and subject != event.actor
