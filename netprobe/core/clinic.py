"""The clinic's fallback contact, pure: opening hours (parsed, and whether the clinic is open at
a given moment) and the `Fallback` a `phone` or `unknown` verdict names.

No I/O and no clock: `now` comes in, already in the clinic's time zone (the adapter,
`netprobe.clinic`, converts it with `zoneinfo` and formats the number with `phonenumbers`).

Hours (`[clinic] hours`, docs/check-format.md "Fallback"): entries separated by commas, each
a day or a range of days and one or more spans, e.g. `Mon-Fri 09:00-17:00, Sat 10:00-13:00`
or `Mon-Thu 09:00-12:30 13:30-18:00`. Days not named are closed; `24:00` ends a span at
midnight; a span past midnight is written as two (`Fri 20:00-24:00, Sat 00:00-02:00`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day codes, Monday first (`datetime.weekday()` order); also the JSON's codes."""

MAX_HOURS_CHARS = 200
MAX_NAME_CHARS = 80
MAX_MESSAGE_CHARS = 300
MAX_SPANS = 28
"""Spans in one hours text (four a day is plenty); more is a mistake or hostile."""

Source = Literal["reflector", "local", "both"]

_SPAN = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
_DAY_NAMES = {name: i for i, name in enumerate(DAYS)} | {
    "monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5,
    "sunday": 6, "tues": 1, "thur": 3, "thurs": 3}


class HoursError(ValueError):
    """The hours text cannot be read; the message says where and how to write it."""


@dataclass(frozen=True)
class Schedule:
    """Opening spans per weekday (Monday first): minutes from midnight, start < end <= 1440."""

    days: tuple[tuple[tuple[int, int], ...], ...] = ((),) * 7

    @property
    def always_closed(self) -> bool:
        return not any(self.days)


def _day(word: str, entry: str) -> int:
    found = _DAY_NAMES.get(word.lower())
    if found is None:
        raise HoursError(f"{entry!r}: {word!r} is not a day (write Mon, Tue, Wed, Thu, Fri, "
                         "Sat or Sun)")
    return found


def _minutes(hour: str, minute: str, entry: str, *, end: bool) -> int:
    h, m = int(hour), int(minute)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise HoursError(f"{entry!r}: {hour}:{minute} is not a time of day (00:00-24:00)")
    return h * 60 + m


def parse_hours(text: str) -> Schedule:
    """The schedule of `text` (module docstring); raises HoursError saying what is wrong."""
    if not isinstance(text, str):
        raise HoursError("hours must be text, e.g. \"Mon-Fri 09:00-17:00\"")
    if len(text) > MAX_HOURS_CHARS:
        raise HoursError(f"hours must be at most {MAX_HOURS_CHARS} characters")
    days: list[list[tuple[int, int]]] = [[] for _ in DAYS]
    count = 0
    entries = [e.strip() for e in text.split(",")]
    if not any(entries):
        raise HoursError("hours is empty: leave it out, or write e.g. \"Mon-Fri 09:00-17:00\"")
    for entry in entries:
        words = entry.split()
        if len(words) < 2:
            raise HoursError(f"{entry!r}: write the days, then the times, e.g. "
                             "\"Mon-Fri 09:00-17:00\"")
        first, _, last = words[0].partition("-")
        start_day = _day(first, entry)
        end_day = _day(last, entry) if last else start_day
        chosen = [(start_day + i) % 7 for i in range((end_day - start_day) % 7 + 1)]
        for word in words[1:]:
            span = _SPAN.fullmatch(word)
            if span is None:
                raise HoursError(f"{entry!r}: {word!r} is not a span of time like 09:00-17:00")
            start = _minutes(span[1], span[2], entry, end=False)
            end = _minutes(span[3], span[4], entry, end=True)
            if end <= start:
                raise HoursError(f"{entry!r}: {word} ends before it starts (a span past "
                                 "midnight is two: Fri 20:00-24:00, Sat 00:00-02:00)")
            count += len(chosen)
            if count > MAX_SPANS:
                raise HoursError(f"hours: at most {MAX_SPANS} spans of time in all")
            for day in chosen:
                days[day].append((start, end))
    return Schedule(tuple(_merged(spans) for spans in days))


def _merged(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)


@dataclass(frozen=True)
class OpenState:
    """Whether the clinic is open at a moment, and until when or from when."""

    open: bool
    until: str | None = None
    """Open: the time the current span ends (`HH:MM`, `24:00` for midnight); None: open
    round the clock."""
    opens_day: str | None = None
    """Closed: the day code of the next opening (None: never opens)."""
    opens_at: str | None = None
    """Closed: the time of the next opening (`HH:MM`)."""
    opens_in_days: int | None = None
    """Closed: days from `now`'s day to the next opening (0: later today, 1: tomorrow...)."""


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def open_state(schedule: Schedule, now: datetime) -> OpenState:
    """The state at `now`, read in `now`'s own time zone (give it in the clinic's)."""
    day, minute = now.weekday(), now.hour * 60 + now.minute
    for start, end in schedule.days[day]:
        if start <= minute < end:
            # a span to midnight joined by one from midnight: open until that one ends
            until, at = end, day
            for _ in range(7):
                following = schedule.days[(at + 1) % 7]
                if until != 1440 or not following or following[0][0] != 0:
                    return OpenState(True, until=_hhmm(until))
                at, until = at + 1, following[0][1]
            return OpenState(True)  # open round the clock, every day
    for ahead in range(8):
        at = (day + ahead) % 7
        for start, _ in schedule.days[at]:
            if ahead or start > minute:
                return OpenState(False, opens_day=DAYS[at], opens_at=_hhmm(start),
                                 opens_in_days=ahead)
    return OpenState(False)


def is_open(schedule: Schedule, now: datetime) -> bool:
    """Whether the clinic is open at `now` (an aware datetime in the clinic's time zone)."""
    return open_state(schedule, now).open


@dataclass(frozen=True)
class Fallback:
    """Whom to call when video and audio will not hold: the clinic's contact, and whether it is
    open at the moment the verdict was given (`open_now` None: no hours known)."""

    phone: str
    """E.164, e.g. `+442079460000`."""
    phone_national: str
    """As dialled inside its country, e.g. `020 7946 0000`."""
    phone_international: str
    """As dialled from abroad, e.g. `+44 20 7946 0000`."""
    source: Source
    """Where the contact came from: the reflector's answer, the local config, or both."""
    name: str = ""
    hours: str = ""
    """The opening hours as configured (the text a person reads)."""
    timezone: str = ""
    """IANA zone the hours are in; empty: this machine's local zone."""
    message: str = ""
    """A short note from the clinic, e.g. where to get urgent help out of hours."""
    region: str = ""
    """The number's country (ISO 3166 code, e.g. `GB`): a caller there dials it nationally."""
    schedule: Schedule | None = field(default=None, compare=False, repr=False)
    state: OpenState | None = None
    """Open or closed at the moment it was evaluated (None: no hours, or not evaluated)."""

    @property
    def open_now(self) -> bool | None:
        return None if self.state is None else self.state.open

    def at(self, local_now: datetime) -> Fallback:
        """This contact with its open state at `local_now` (in the clinic's time zone)."""
        if self.schedule is None:
            return replace(self, state=None)
        return replace(self, state=open_state(self.schedule, local_now))

    def to_json(self) -> dict[str, Any]:
        state = self.state
        return {
            "name": self.name or None,
            "phone": self.phone,
            "phone_national": self.phone_national,
            "phone_international": self.phone_international,
            "hours": self.hours or None,
            "timezone": self.timezone or None,
            "open_now": self.open_now,
            "open_until": state.until if state is not None else None,
            "opens": None if state is None or state.opens_day is None
            else {"day": state.opens_day, "time": state.opens_at},
            "message": self.message or None,
            "source": self.source,
        }

