"""The clinic's fallback contact at the edges: phone numbers (`phonenumbers`), time zones
(`zoneinfo`), the `[clinic]` settings and the reflector's `clinic` object merged into a
`core.clinic.Fallback`, and the words a person reads (docs/check-format.md, "Fallback").

The reflector's `clinic` object is hostile until checked: `from_answer` bounds and checks it
as the config is checked, and drops it (one log line) when anything in it is wrong.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import PhoneNumberFormat

from netprobe.core.classify import PHONE, UNKNOWN
from netprobe.core.clinic import (
    MAX_HOURS_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    Fallback,
    HoursError,
    Schedule,
    Source,
    parse_hours,
)
from netprobe.i18n import N_, _
from netprobe.settings import ClinicSettings

logger = logging.getLogger(__name__)

KEYS = ("name", "phone", "hours", "timezone", "message")
"""The contact's keys: in `[clinic]`, in the reflector's `clinic` object, merged one by one."""
MAX_PHONE_CHARS = 40
_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,3}")


class ClinicError(ValueError):
    """A contact value is wrong: `key` and a reason a person can act on."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def parse_phone(text: str, region: str = "") -> phonenumbers.PhoneNumber:
    """`text` as a valid phone number (`region`: the country of a number without +); raises
    ClinicError("phone", ...)."""
    if not isinstance(text, str) or not text.strip():
        raise ClinicError("phone", "give the number, e.g. \"+44 20 7946 0000\"")
    if len(text) > MAX_PHONE_CHARS:
        raise ClinicError("phone", f"must be at most {MAX_PHONE_CHARS} characters")
    if not text.strip().startswith("+") and not region:
        raise ClinicError("phone", f"{text!r}: write it with its country code (+44 ...), or "
                          "set phone_region (e.g. \"GB\")")
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise ClinicError("phone", f"{text!r} is not a phone number ({exc._msg})") from None
    if not phonenumbers.is_valid_number(number):
        raise ClinicError("phone", f"{text!r} is not a valid phone number"
                          + (f" in {region.upper()}" if region and not text.strip().startswith(
                              "+") else ""))
    return number


def zone(name: str) -> tzinfo | None:
    """The IANA zone `name` (None for empty: this machine's local zone); raises ClinicError."""
    if not name:
        return None
    if len(name) > 64 or not _ZONE.fullmatch(name):
        raise ClinicError("timezone", f"{name[:64]!r} is not an IANA time zone like "
                          "\"Europe/London\"")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ClinicError("timezone", f"{name!r} is not a known IANA time zone (e.g. "
                          "\"Europe/London\")") from None


def _text(key: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ClinicError(key, f"must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ClinicError(key, f"must be at most {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise ClinicError(key, "must be one line of text (no control characters)")
    return value.strip()


def _schedule(hours: str) -> Schedule | None:
    if not hours:
        return None
    try:
        return parse_hours(hours)
    except HoursError as exc:
        raise ClinicError("hours", str(exc)) from None


def settings_problem(clinic: ClinicSettings) -> tuple[str, str] | None:
    """The first bad value of `[clinic]`: (key, reason), or None (config_checks.problem)."""
    try:
        region = _text("phone_region", clinic.phone_region, 2).upper()
        if region and region not in phonenumbers.SUPPORTED_REGIONS:
            raise ClinicError("phone_region", f"{clinic.phone_region!r} is not a country "
                              "code phonenumbers knows (e.g. \"GB\", \"US\", \"ES\")")
        _text("name", clinic.name, MAX_NAME_CHARS)
        _text("message", clinic.message, MAX_MESSAGE_CHARS)
        if clinic.phone:
            parse_phone(clinic.phone, region)
        _schedule(_text("hours", clinic.hours, MAX_HOURS_CHARS))
        zone(_text("timezone", clinic.timezone, 64))
    except ClinicError as exc:
        return exc.key, exc.reason
    return None


def _checked(values: dict[str, Any], region: str) -> dict[str, str]:
    """`values` (a contact's keys) checked; raises ClinicError. The phone becomes E.164."""
    out = {"name": _text("name", values.get("name", ""), MAX_NAME_CHARS),
           "message": _text("message", values.get("message", ""), MAX_MESSAGE_CHARS),
           "hours": _text("hours", values.get("hours", ""), MAX_HOURS_CHARS),
           "timezone": _text("timezone", values.get("timezone", ""), 64)}
    phone = _text("phone", values.get("phone", ""), MAX_PHONE_CHARS)
    out["phone"] = "" if not phone else phonenumbers.format_number(
        parse_phone(phone, region), PhoneNumberFormat.E164)
    _schedule(out["hours"])
    zone(out["timezone"])
    return out


def local_values(clinic: ClinicSettings) -> dict[str, str]:
    """The keys `[clinic]` sets (a checked config: only non-empty keys, phone in E.164)."""
    checked = _checked({k: getattr(clinic, k) for k in KEYS}, clinic.phone_region)
    return {k: v for k, v in checked.items() if v}


def reflector_json(clinic: ClinicSettings | None) -> dict[str, str] | None:
    """The `clinic` object a reflector hands out (None: no phone configured)."""
    if clinic is None or not clinic.phone:
        return None
    values = local_values(clinic)
    return {k: values[k] for k in KEYS if k in values}


def from_answer(data: Any) -> dict[str, str] | None:
    """The reflector's `clinic` object, checked (None when absent; malformed: None and one
    log line, never an exception)."""
    if data is None:
        return None
    try:
        if not isinstance(data, dict):
            raise ClinicError("clinic", f"must be an object, got {type(data).__name__}")
        unknown = [k for k in data if k not in KEYS]
        if len(data) > 16 or len(unknown) > 8:
            raise ClinicError("clinic", "too many keys")
        values = _checked({k: data[k] for k in KEYS if k in data}, "")
        if not values["phone"]:
            raise ClinicError("phone", "missing")
        return {k: v for k, v in values.items() if v}
    except ClinicError as exc:
        logger.warning("the reflector's clinic contact was ignored (%s); the local settings "
                       "stay in force", exc, extra={"event": "clinic_ignored", "key": exc.key,
                                                    "reason": exc.reason[:200]})
        return None


def merged(local: ClinicSettings, reflector: dict[str, str] | None) -> Fallback | None:
    """The contact from the reflector's (checked) values with the local keys winning key by
    key; None when neither gives a phone number."""
    own = local_values(local)
    theirs = reflector or {}
    values = {**theirs, **own}
    if not values.get("phone"):
        return None
    used = {k for k in values if values[k]}
    from_local = any(k in own for k in used)
    from_reflector = any(k in theirs and k not in own for k in used)
    source: Source = "both" if from_local and from_reflector else \
        "local" if from_local else "reflector"
    number = phonenumbers.parse(values["phone"], None)
    return Fallback(
        phone=values["phone"],
        phone_national=phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL),
        phone_international=phonenumbers.format_number(number,
                                                       PhoneNumberFormat.INTERNATIONAL),
        source=source, name=values.get("name", ""), hours=values.get("hours", ""),
        timezone=values.get("timezone", ""), message=values.get("message", ""),
        region=phonenumbers.region_code_for_number(number) or "",
        schedule=_schedule(values.get("hours", "")))


def evaluated(fallback: Fallback | None, now: datetime) -> Fallback | None:
    """`fallback` with its open state at `now` (aware), read in the clinic's zone."""
    if fallback is None:
        return None
    try:
        where = zone(fallback.timezone)
    except ClinicError:
        where = None
    return fallback.at(now.astimezone(where))


def contact(local: ClinicSettings, reflector: dict[str, str] | None, now: datetime
            ) -> Fallback | None:
    """The fallback a result names: merged, evaluated at `now`; None when no number is known.
    Never raises (a config that no longer checks gives None)."""
    try:
        return evaluated(merged(local, reflector), now)
    except ClinicError:
        return None


# -- words ---------------------------------------------------------------------------------

_DAY_WORDS = {"mon": N_("Monday"), "tue": N_("Tuesday"), "wed": N_("Wednesday"),
              "thu": N_("Thursday"), "fri": N_("Friday"), "sat": N_("Saturday"),
              "sun": N_("Sunday")}


def _day_word(code: str, in_days: int | None) -> str:
    if in_days == 0:
        return _("today")
    if in_days == 1:
        return _("tomorrow")
    return _(_DAY_WORDS.get(code, code))


def fallback_lines(fallback: Fallback) -> list[str]:
    """What a person reads: whom to call, the number (as dialled in its own country), open or
    closed at the moment the fallback was evaluated, and the clinic's note."""
    number = fallback.phone_national
    who = fallback.name or _("your clinic")
    state = fallback.state
    if state is not None and state.open and state.until is None:
        first = _("Call {who} on {number} (open now).").format(who=who, number=number)
    elif state is not None and state.open:
        first = _("Call {who} on {number} (open now, until {time}).").format(
            who=who, number=number, time=state.until)
    elif state is not None and state.opens_day is not None:
        first = _("Call {who} on {number} (closed now; opens {day} {time}).").format(
            who=who, number=number, day=_day_word(state.opens_day, state.opens_in_days),
            time=state.opens_at)
    elif state is not None:
        first = _("Call {who} on {number} (closed now).").format(who=who, number=number)
    else:
        first = _("Call {who} on {number}.").format(who=who, number=number)
    return [first, *([fallback.message] if fallback.message else [])]


def result_lines(verdict: str, fallback: Fallback | None) -> list[str]:
    """The fallback lines under a `phone` or `unknown` verdict (none for the others, or when
    no number is known)."""
    if fallback is None or verdict not in (PHONE, UNKNOWN):
        return []
    return fallback_lines(fallback)


def with_fallback(doc: dict[str, Any], local: ClinicSettings, last_check: Any,
                  wall_now_s: float) -> dict[str, Any]:
    """The agent's status (or event) `doc` with `fallback`: for a `phone` or `unknown`
    recommendation, the contact of the last check (else the local one) open or closed at
    `wall_now_s` (Unix seconds); None otherwise, or when no number is known."""
    fallback = None
    if doc.get("recommendation") in (PHONE, UNKNOWN):
        now = datetime.fromtimestamp(wall_now_s, UTC)
        known = getattr(last_check, "fallback", None)
        fallback = evaluated(known, now) if isinstance(known, Fallback) else \
            contact(local, None, now)
    return {**doc, "fallback": None if fallback is None else fallback.to_json()}
