"""When to tell the person in front of the screen that the recommendation changed, and in what
words: a pure state machine the desktop notices (`netprobe.agent.notify`) feed with the agent's
status events. No I/O and no clock: `now` (the adapter's monotonic clock, seconds) comes in.

The rules (docs/agent-api.md, "Desktop notices"):

- Only during a session (the agent's `state` is `monitoring`, started by the video app or a
  detected call). Idle checks never notify: the person may not be at the computer, and a
  pop-up out of context alarms more than it helps; before a session, `netprobe check` speaks.
- A session starts as if on video (what is being watched is a video session). The first
  notice comes no earlier than `OPENING_S` into the session, when the opening check has had
  time to replace an old idle verdict; then the level in force, if it is not video, is said.
- After that, a step down (video -> audio only -> phone) is said at once: the agent's own
  hysteresis (3 bad windows in a row) has already filtered it.
- A step up (back towards video) is said only once the level last said has stood for
  `HOLD_UP_S`; until then it waits, and if the link falls back to the level last said, it is
  dropped: a wobbling link gives no notice at all, never a "better / worse" pair.
- `unknown` (the agent cannot tell) is never said and changes nothing: the person keeps the
  advice they last had. Nothing changed, nothing said; at most one notice per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from netprobe.core.words import N_, Phrase

Level = Literal["video", "audio_only", "phone"]

#: Levels, best first.
LEVELS: tuple[Level, ...] = ("video", "audio_only", "phone")
OPENING_S = 20.0
"""No notice before this long into a session: the opening check (at most 15 s) comes first."""
HOLD_UP_S = 300.0
"""A step up is said only when the level last said has stood this long (5 minutes)."""

TITLE = N_("Your connection")
_DOWN_TO_AUDIO = N_("Your connection has become unsteady. Switching to audio only will keep "
                    "your session going.")
_UP_TO_AUDIO = N_("Your connection is a little steadier again; audio only should work now.")
_PHONE_CLINIC = N_("Your connection cannot carry the session right now. Please call {clinic} "
                   "on {phone} to go on by phone.")
_PHONE_NUMBER = N_("Your connection cannot carry the session right now. Please call {phone} to "
                   "go on by phone.")
_PHONE = N_("Your connection cannot carry the session right now. Please go on by phone with "
            "your therapist.")
_VIDEO = N_("Your connection is steady again; video should work now.")


@dataclass(frozen=True)
class Notice:
    """One notification to show (translated where it is shown: `phrase.text()`, `_(title)`)."""

    verdict: Level
    """The recommendation it announces."""
    phrase: Phrase
    """The sentence: an English template marked with `N_` and its arguments."""
    title: str = TITLE


def notice_for(verdict: Level, told: Level, phone: str | None = None,
               clinic: str | None = None) -> Notice:
    """The words for moving from `told` (the level last said) to `verdict`."""
    if verdict == "video":
        return Notice(verdict, Phrase.of(_VIDEO))
    if verdict == "audio_only":
        return Notice(verdict, Phrase.of(_UP_TO_AUDIO if told == "phone" else _DOWN_TO_AUDIO))
    if phone and clinic:
        return Notice(verdict, Phrase.of(_PHONE_CLINIC, clinic=clinic, phone=phone))
    if phone:
        return Notice(verdict, Phrase.of(_PHONE_NUMBER, phone=phone))
    return Notice(verdict, Phrase.of(_PHONE))


def _rank(level: Level) -> int:
    return LEVELS.index(level)


class Notices:
    """The decisions. Feed every status event to `observe`, call `tick` at `next_deadline()`;
    each returns the notices to show now (none, or one)."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.in_session = False
        self.told: Level = "video"
        """The level the person was last told (a session starts from video)."""
        self.current: str = "unknown"
        """The agent's recommendation as last seen."""
        self.told_at: float | None = None
        """When the last notice was given (None: none yet in this session)."""
        self.started_at = 0.0
        self.phone: str | None = None
        self.clinic: str | None = None
        self._due: float | None = None

    def observe(self, now: float, state: str, recommendation: str, *,
                phone: str | None = None, clinic: str | None = None) -> list[Notice]:
        """A status event: the agent's `state` (`idle`/`monitoring`), its `recommendation`,
        and the clinic's number and name if the status names them."""
        if state != "monitoring":
            self._forget()  # the session is over (or none runs): nothing is held
            return []
        if not self.in_session:
            self.in_session, self.started_at = True, now
            self.told, self.told_at = "video", None
        self.current = recommendation
        self.phone, self.clinic = phone or None, clinic or None
        return self._decide(now)

    def tick(self, now: float) -> list[Notice]:
        return self._decide(now) if self.in_session else []

    def next_deadline(self) -> float | None:
        """When a notice held back (the opening, a step up) falls due; None: nothing held."""
        return self._due

    def _decide(self, now: float) -> list[Notice]:
        self._due = None
        current = self.current
        if current not in LEVELS or current == self.told:
            return []  # unknown, or what the person already knows
        level: Level = current  # type: ignore[assignment]
        due = self.started_at + OPENING_S
        if _rank(level) < _rank(self.told) and self.told_at is not None:
            due = max(due, self.told_at + HOLD_UP_S)
        if now < due:
            self._due = due
            return []
        notice = notice_for(level, self.told, self.phone, self.clinic)
        self.told, self.told_at = level, now
        return [notice]


def status_fields(status: dict[str, Any]) -> dict[str, Any]:
    """What `Notices.observe` takes from a status document (`netprobe.status/1`, or an event of
    `/v1/events`): the number is the clinic's as dialled in its own country."""
    fallback = status.get("fallback")
    fallback = fallback if isinstance(fallback, dict) else {}
    phone = fallback.get("phone_national") or fallback.get("phone")
    name = fallback.get("name")
    return {"state": str(status.get("state", "idle")),
            "recommendation": str(status.get("recommendation", "unknown")),
            "phone": phone if isinstance(phone, str) else None,
            "clinic": name if isinstance(name, str) else None}
