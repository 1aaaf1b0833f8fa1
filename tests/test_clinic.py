"""The clinic's fallback contact without a network: opening hours (parsing, open or closed
across days, time zones and DST), phone numbers through `phonenumbers`, the merge of the
reflector's contact with the local one, a hostile `clinic` object, the words, and bad
`[clinic]` values refused through `load_settings` and the command line."""

from __future__ import annotations

import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from procs import CHILD_ENV, NETPROBE

from netprobe.clinic import (
    ClinicError,
    contact,
    fallback_lines,
    from_answer,
    merged,
    parse_phone,
    reflector_json,
    result_lines,
    settings_problem,
    with_fallback,
)
from netprobe.config import load_settings
from netprobe.core.classify import Verdict
from netprobe.core.clinic import HoursError, Schedule, is_open, open_state, parse_hours
from netprobe.core.metrics import LinkMetrics
from netprobe.core.result import CheckResult
from netprobe.errors import ConfigError
from netprobe.settings import ClinicSettings

LONDON = ZoneInfo("Europe/London")
WEEK = "Mon-Fri 09:00-17:00, Sat 10:00-13:00"
RIVERSIDE = ClinicSettings(name="Riverside Clinic", phone="020 7946 0000", phone_region="GB",
                           hours=WEEK, timezone="Europe/London",
                           message="Out of hours, call NHS 111.")


def at(day: int, hh: int, mm: int = 0, tz: ZoneInfo = LONDON) -> datetime:
    """A moment in the week of Monday 2026-01-05 (`day` 0 = Monday), in `tz`."""
    return datetime(2026, 1, 5 + day, hh, mm, tzinfo=tz)


# -- hours ----------------------------------------------------------------------------------

def test_a_week_of_hours_is_parsed_per_day() -> None:
    s = parse_hours(WEEK)
    assert s.days[:5] == (((540, 1020),),) * 5
    assert s.days[5] == ((600, 780),) and s.days[6] == ()


def test_several_spans_ranges_that_wrap_and_overlaps_merge() -> None:
    s = parse_hours("Fri-Mon 09:00-12:30 13:30-18:00, mon 12:00-14:00, Wed 20:00-24:00")
    assert s.days[0] == ((540, 1080),)  # 09:00-12:30, 12:00-14:00 and 13:30-18:00 joined
    assert s.days[4] == s.days[5] == s.days[6] == ((540, 750), (810, 1080))
    assert s.days[1] == () and s.days[2] == ((1200, 1440),)
    assert parse_hours("Monday 08:00-09:00").days[0] == ((480, 540),)


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    (" , ", "empty"),
    ("Mon", "write the days, then the times"),
    ("09:00-17:00", "write the days, then the times"),
    ("Funday 09:00-17:00", "'Funday' is not a day"),
    ("Mon-Fry 09:00-17:00", "'Fry' is not a day"),
    ("Mon 9-17", "not a span of time"),
    ("Mon 09:00 17:00", "not a span of time"),
    ("Mon 17:00-09:00", "ends before it starts"),
    ("Mon 09:00-09:00", "ends before it starts"),
    ("Mon 25:00-26:00", "not a time of day"),
    ("Mon 09:60-10:00", "not a time of day"),
    ("Mon 24:00-24:30", "not a time of day"),
    ("Mon 09:00-24:01", "not a time of day"),
    ("Mon-Sun 01:00-02:00 03:00-04:00 05:00-06:00 07:00-08:00 09:00-10:00", "at most 28"),
    ("Mon 09:00-17:00, " * 20, "at most 200 characters"),
])
def test_bad_hours_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(HoursError, match=words):
        parse_hours(text)


def test_open_and_closed_across_the_week() -> None:
    s = parse_hours(WEEK)
    early = open_state(s, at(0, 8, 59))
    assert not early.open and (early.opens_day, early.opens_at, early.opens_in_days) == \
        ("mon", "09:00", 0)
    assert open_state(s, at(0, 9)).open and open_state(s, at(0, 9)).until == "17:00"
    assert open_state(s, at(0, 16, 59)).open
    evening = open_state(s, at(0, 17))  # the end minute is closed
    assert not evening.open and (evening.opens_day, evening.opens_in_days) == ("tue", 1)
    friday = open_state(s, at(4, 18))
    assert (friday.opens_day, friday.opens_at, friday.opens_in_days) == ("sat", "10:00", 1)
    saturday = open_state(s, at(5, 14))
    assert (saturday.opens_day, saturday.opens_at, saturday.opens_in_days) == \
        ("mon", "09:00", 2)
    assert not is_open(s, at(6, 12)) and is_open(s, at(5, 12, 59))


def test_only_one_day_a_week_opens_next_week_not_today() -> None:
    s = parse_hours("Wed 10:00-11:00")
    later = open_state(s, at(2, 12))  # Wednesday after closing
    assert (later.opens_day, later.opens_in_days) == ("wed", 7)


def test_a_span_to_midnight_continues_into_the_next_day() -> None:
    s = parse_hours("Fri 20:00-24:00, Sat 00:00-02:00")
    state = open_state(s, at(4, 23))
    assert state.open and state.until == "02:00"
    assert open_state(s, at(5, 1)).until == "02:00"
    always = open_state(parse_hours("Mon-Sun 00:00-24:00"), at(2, 3))
    assert always.open and always.until is None
    assert open_state(parse_hours("Mon-Sun 00:00-24:00, Wed 00:00-24:00"), at(2, 3)).open


def test_never_open_has_no_next_opening() -> None:
    state = open_state(Schedule(), at(0, 12))
    assert not state.open and state.opens_day is None


def test_open_now_is_read_in_the_clinics_zone_across_dst() -> None:
    clinic = merged(RIVERSIDE, None)
    assert clinic is not None
    # Monday 08:30 UTC: 08:30 in London in January (closed), 09:30 in summer time (open)
    winter = contact(RIVERSIDE, None, datetime(2026, 1, 5, 8, 30, tzinfo=UTC))
    summer = contact(RIVERSIDE, None, datetime(2026, 3, 30, 8, 30, tzinfo=UTC))
    assert winter is not None and summer is not None
    assert winter.open_now is False and summer.open_now is True
    # the same moment for a clinic in New York: 03:30 there, closed
    ny = contact(ClinicSettings(phone="+1 212 555 0100", hours=WEEK,
                                timezone="America/New_York"), None,
                 datetime(2026, 3, 30, 14, 30, tzinfo=UTC))
    assert ny is not None and ny.open_now is True  # 10:30 in New York (EDT since 8 March)
    # the night summer time starts in London (01:00 UTC, 29 March): 01:30 UTC is 02:30 BST
    night = ClinicSettings(phone="+44 20 7946 0000", hours="Sun 02:00-03:00",
                           timezone="Europe/London")
    before = contact(night, None, datetime(2026, 3, 29, 0, 30, tzinfo=UTC))  # 00:30 GMT
    after = contact(night, None, datetime(2026, 3, 29, 1, 30, tzinfo=UTC))
    assert before is not None and before.open_now is False
    assert after is not None and after.open_now is True


# -- phone numbers --------------------------------------------------------------------------

def test_phone_numbers_are_checked_and_formatted() -> None:
    clinic = merged(ClinicSettings(phone="+44 20 7946 0000"), None)
    assert clinic is not None
    assert (clinic.phone, clinic.phone_national, clinic.phone_international, clinic.region) == \
        ("+442079460000", "020 7946 0000", "+44 20 7946 0000", "GB")
    national = merged(ClinicSettings(phone="020 7946 0000", phone_region="gb"), None)
    assert national is not None and national.phone == "+442079460000"
    spain = merged(ClinicSettings(phone="+34 912 34 56 78"), None)
    assert spain is not None and spain.phone_national == "912 34 56 78"


@pytest.mark.parametrize(("phone", "region", "words"), [
    ("020 7946 0000", "", "country code"),
    ("+44 20 7946", "", "not a valid phone number"),
    ("020 7946 000", "GB", "not a valid phone number in GB"),
    ("call us", "GB", "not a phone number"),
    ("+" + "1" * 50, "", "at most 40"),
    ("   ", "", "give the number"),
])
def test_bad_phone_numbers_are_refused(phone: str, region: str, words: str) -> None:
    with pytest.raises(ClinicError, match=words) as caught:
        parse_phone(phone, region)
    assert caught.value.key == "phone"


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"phone": "12345"}, "phone", "country code"),
    ({"phone_region": "XX", "phone": "020 7946 0000"}, "phone_region", "not a country"),
    ({"hours": "Mon 9-5"}, "hours", "not a span of time"),
    ({"timezone": "Europe/Londn"}, "timezone", "not a known IANA time zone"),
    ({"timezone": "../../etc/passwd"}, "timezone", "not an IANA time zone"),
    ({"message": "x" * 301}, "message", "at most 300"),
    ({"message": "two\nlines"}, "message", "one line"),
    ({"name": "n" * 81}, "name", "at most 80"),
])
def test_settings_problems_name_the_key(changes: dict[str, str], key: str, words: str) -> None:
    found = settings_problem(ClinicSettings(**{"phone": "+44 20 7946 0000", **changes}))
    assert found is not None and found[0] == key and words in found[1]
    assert settings_problem(RIVERSIDE) is None and settings_problem(ClinicSettings()) is None


# -- the reflector's contact and the local one -------------------------------------------------

def test_merge_local_keys_win_one_by_one() -> None:
    theirs = reflector_json(RIVERSIDE)
    assert theirs == {"name": "Riverside Clinic", "phone": "+442079460000", "hours": WEEK,
                      "timezone": "Europe/London", "message": "Out of hours, call NHS 111."}
    only_theirs = merged(ClinicSettings(), theirs)
    assert only_theirs is not None and only_theirs.source == "reflector"
    note = merged(ClinicSettings(message="Ring reception first."), theirs)
    assert note is not None and note.source == "both"
    assert (note.message, note.phone, note.hours) == ("Ring reception first.", "+442079460000",
                                                     WEEK)
    own = merged(ClinicSettings(phone="+34 912 34 56 78", name="Clínica"), theirs)
    assert own is not None and own.phone == "+34912345678" and own.name == "Clínica"
    assert own.source == "both"  # hours, zone and message still the reflector's
    alone = merged(RIVERSIDE, None)
    assert alone is not None and alone.source == "local"
    same = merged(RIVERSIDE, theirs)  # every key set here: nothing of theirs is used
    assert same is not None and same.source == "local"
    assert merged(ClinicSettings(name="No number"), None) is None
    assert reflector_json(ClinicSettings(name="No number")) is None and reflector_json(None) is None


@pytest.mark.parametrize("data", [
    "+442079460000",
    ["+442079460000"],
    {"phone": 442079460000},
    {"phone": "+44 123"},
    {"name": "Riverside"},
    {"phone": "+442079460000", "message": "m" * 301},
    {"phone": "+442079460000", "hours": "always"},
    {"phone": "+442079460000", "timezone": "../../../etc/passwd"},
    {"phone": "+442079460000", "timezone": "Mars/Olympus"},
    {"phone": "+442079460000", "name": ["a"]},
    {"phone": "+442079460000", **{f"k{i}": i for i in range(20)}},
    {"phone": "+44 20 7946 0000\x1b[2J"},
])
def test_a_malformed_clinic_from_the_reflector_is_ignored_and_logged(
        data: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="netprobe.clinic")
    assert from_answer(data) is None
    logged = [r for r in caplog.records if r.name == "netprobe.clinic"]
    assert len(logged) == 1 and getattr(logged[0], "event", None) == "clinic_ignored"
    assert logged[0].exc_info is None
    kept = contact(RIVERSIDE, from_answer(data), at(0, 10))
    assert kept is not None and kept.source == "local" and kept.phone == "+442079460000"


def test_a_good_clinic_from_the_reflector_is_taken_as_given(
        caplog: pytest.LogCaptureFixture) -> None:
    assert from_answer(None) is None
    got = from_answer({"phone": "+44 20 7946 0000", "name": "Riverside", "extra": "later"})
    assert got == {"phone": "+442079460000", "name": "Riverside"}
    assert not [r for r in caplog.records if r.name == "netprobe.clinic"]


# -- words and where they show ------------------------------------------------------------------

def test_the_words_for_a_person() -> None:
    open_now = contact(RIVERSIDE, None, at(0, 10))
    assert open_now is not None and fallback_lines(open_now) == [
        "Call Riverside Clinic on 020 7946 0000 (open now, until 17:00).",
        "Out of hours, call NHS 111."]
    weekend = contact(RIVERSIDE, None, at(5, 14))
    assert weekend is not None
    assert fallback_lines(weekend)[0] == \
        "Call Riverside Clinic on 020 7946 0000 (closed now; opens Monday 09:00)."
    evening = contact(RIVERSIDE, None, at(1, 18))
    assert evening is not None and "(closed now; opens tomorrow 09:00)" in \
        fallback_lines(evening)[0]
    bare = contact(ClinicSettings(phone="+44 20 7946 0000"), None, at(0, 10))
    assert bare is not None and fallback_lines(bare) == ["Call your clinic on 020 7946 0000."]
    assert bare.to_json()["open_now"] is None


def test_the_result_and_the_agents_status_carry_the_fallback() -> None:
    fallback = contact(RIVERSIDE, None, at(0, 10))
    result = CheckResult(Verdict("phone", 0.8, ()), LinkMetrics(), at(0, 10), 3.0,
                         fallback=fallback)
    doc = result.to_json()["fallback"]
    assert doc["phone"] == "+442079460000" and doc["open_now"] is True
    assert doc["open_until"] == "17:00" and doc["source"] == "local" and doc["opens"] is None
    assert CheckResult(Verdict("video", 0.8, ()), LinkMetrics(), at(0, 10), 3.0
                       ).to_json()["fallback"] is None
    assert result_lines("phone", fallback)[0].startswith("Call Riverside Clinic")
    assert result_lines("unknown", fallback) and not result_lines("video", fallback)
    assert not result_lines("audio_only", fallback) and not result_lines("phone", None)
    saturday_evening = at(5, 18).timestamp()
    status = with_fallback({"recommendation": "phone"}, ClinicSettings(), result,
                           saturday_evening)  # the last check's contact, at the status's time
    assert status["fallback"]["open_now"] is False
    assert status["fallback"]["opens"] == {"day": "mon", "time": "09:00"}
    local = with_fallback({"recommendation": "unknown"}, RIVERSIDE, None, saturday_evening)
    assert local["fallback"]["phone"] == "+442079460000"
    assert with_fallback({"recommendation": "video"}, RIVERSIDE, result, 0)["fallback"] is None
    assert with_fallback({"recommendation": "unknown"}, ClinicSettings(), None, 0)[
        "fallback"] is None


# -- bad [clinic] values in a real settings file ---------------------------------------------

def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "netprobe.toml"
    path.write_text("# settings\n[clinic]\nname = \"Riverside Clinic\"\n" + body)
    return path


@pytest.mark.parametrize(("body", "key", "words"), [
    ('phone = "020 7946 000"\nphone_region = "GB"\n', "phone", "not a valid phone number"),
    ('phone = "7946 0000"\n', "phone", "country code"),
    ('phone = "+44 20 7946 0000"\nhours = "Mon-Fri 9 to 5"\n', "hours", "not a span"),
    ('phone = "+44 20 7946 0000"\nhours = "Mon-Fri 17:00-09:00"\n', "hours",
     "ends before it starts"),
    ('phone = "+44 20 7946 0000"\ntimezone = "London"\n', "timezone", "IANA"),
    (f'phone = "+44 20 7946 0000"\nmessage = "{"m" * 301}"\n', "message", "at most 300"),
    ("phone = 442079460000\n", "phone", "expected a string"),
])
def test_bad_clinic_settings_name_file_line_and_key(tmp_path: Path, body: str, key: str,
                                                    words: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    msg = str(caught.value)
    line = 1 + path.read_text().splitlines().index(
        next(t for t in path.read_text().splitlines() if t.startswith(f"{key} =")))
    assert msg.startswith(f"{path}: line {line}: clinic.{key}: "), msg
    assert words in msg


def test_a_good_clinic_section_reaches_the_reflector_settings(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, 'phone = "+44 20 7946 0000"\n'))
    assert settings.clinic.phone == "+44 20 7946 0000"
    assert settings.reflector.clinic == settings.clinic
    assert load_settings().reflector.clinic is None  # the shipped file: no contact


def test_the_contact_under_reflector_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.toml"
    path.write_text('[reflector]\nclinic = { phone = "+44 20 7946 0000" }\n')
    with pytest.raises(ConfigError, match=r"line 2: reflector\.clinic: .*\[clinic\] section"):
        load_settings(path)


@pytest.mark.parametrize("command", [("check", "--local"), ("serve", "--port", "0")])
def test_the_command_line_refuses_a_bad_number_with_exit_2(tmp_path: Path,
                                                           command: tuple[str, ...]) -> None:
    path = _write(tmp_path, 'phone = "+44 20 7946"\n')
    proc = subprocess.run([*NETPROBE, "--config", str(path), *command], capture_output=True,
                          text=True, timeout=60, env=CHILD_ENV)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: line 4: clinic.phone: '+44 20 7946' is not a valid phone number" in \
        proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
