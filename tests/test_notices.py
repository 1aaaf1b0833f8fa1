"""The desktop notices' decisions (`netprobe.core.notices`), pure: when to say something to the
person in front of the screen, and what."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.core.notices import HOLD_UP_S, OPENING_S, Notice, Notices, status_fields

T0 = 1000.0
AFTER_OPENING = T0 + OPENING_S + 1


def session(at: float = T0, recommendation: str = "video") -> Notices:
    n = Notices()
    assert n.observe(at, "monitoring", recommendation) == []
    return n


def said(notices: list[Notice]) -> list[str]:
    return [n.verdict for n in notices]


def test_idle_changes_never_notify() -> None:
    n = Notices()
    for i, rec in enumerate(["video", "phone", "audio_only", "video", "phone"]):
        assert n.observe(T0 + i * 600, "idle", rec) == []
        assert n.tick(T0 + i * 600 + 1) == [] and n.next_deadline() is None


def test_a_step_down_during_a_session_is_said_once_in_one_calm_sentence() -> None:
    n = session()
    [notice] = n.observe(AFTER_OPENING, "monitoring", "audio_only")
    assert notice.verdict == "audio_only"
    assert notice.phrase.english() == ("Your connection has become unsteady. Switching to audio "
                                       "only will keep your session going.")
    assert n.observe(AFTER_OPENING + 5, "monitoring", "audio_only") == []  # nothing changed
    assert n.tick(AFTER_OPENING + 3600) == []


def test_phone_names_the_clinic_and_its_number() -> None:
    n = session()
    [notice] = n.observe(AFTER_OPENING, "monitoring", "phone", phone="020 7946 0000",
                         clinic="Riverside Clinic")
    assert notice.phrase.english() == ("Your connection cannot carry the session right now. "
                                       "Please call Riverside Clinic on 020 7946 0000 to go on "
                                       "by phone.")
    n = session()
    [notice] = n.observe(AFTER_OPENING, "monitoring", "phone", phone="020 7946 0000")
    assert "Please call 020 7946 0000 to go on by phone." in notice.phrase.english()
    n = session()
    [notice] = n.observe(AFTER_OPENING, "monitoring", "phone")
    assert "go on by phone with your therapist" in notice.phrase.english()
    assert "{" not in notice.phrase.english()


def test_nothing_before_the_opening_check_then_the_level_in_force() -> None:
    n = session(recommendation="audio_only")  # an old idle verdict when the session starts
    assert n.next_deadline() == T0 + OPENING_S
    assert n.observe(T0 + 5, "monitoring", "phone") == []  # the opening check: still held
    assert said(n.tick(T0 + OPENING_S)) == ["phone"]
    n = session(recommendation="audio_only")
    assert n.observe(T0 + 8, "monitoring", "video") == []  # the opening check says video
    assert n.tick(T0 + OPENING_S) == [] and n.next_deadline() is None


def test_a_step_up_waits_until_the_last_notice_has_stood_for_the_hold() -> None:
    n = session()
    assert said(n.observe(AFTER_OPENING, "monitoring", "audio_only")) == ["audio_only"]
    assert n.observe(AFTER_OPENING + 60, "monitoring", "video") == []
    assert n.next_deadline() == AFTER_OPENING + HOLD_UP_S
    [back] = n.tick(AFTER_OPENING + HOLD_UP_S)
    assert back.phrase.english() == "Your connection is steady again; video should work now."
    assert n.next_deadline() is None


def test_a_step_up_after_a_long_steady_spell_is_said_at_once() -> None:
    n = session()
    n.observe(AFTER_OPENING, "monitoring", "phone")
    [up] = n.observe(AFTER_OPENING + HOLD_UP_S + 1, "monitoring", "audio_only")
    assert up.phrase.english() == ("Your connection is a little steadier again; audio only "
                                   "should work now.")


def test_flapping_gives_no_extra_notice() -> None:
    n = session()
    assert said(n.observe(AFTER_OPENING, "monitoring", "audio_only")) == ["audio_only"]
    out: list[Notice] = []
    for i in range(1, 9):  # better, worse, better, worse... each within the hold
        out += n.observe(AFTER_OPENING + 30 * i, "monitoring", "video" if i % 2 else "audio_only")
    out += n.tick(AFTER_OPENING + HOLD_UP_S + 10)  # it ended on audio_only: nothing to say
    assert out == []


def test_a_step_down_is_never_held_even_right_after_a_notice() -> None:
    n = session()
    n.observe(AFTER_OPENING, "monitoring", "audio_only")
    assert said(n.observe(AFTER_OPENING + 2, "monitoring", "phone")) == ["phone"]


def test_unknown_is_never_said_and_keeps_the_last_advice() -> None:
    n = session()
    n.observe(AFTER_OPENING, "monitoring", "audio_only")
    assert n.observe(AFTER_OPENING + 1, "monitoring", "unknown") == []
    assert n.observe(AFTER_OPENING + 2, "monitoring", "audio_only") == []  # still what was said
    assert n.tick(AFTER_OPENING + 3600) == []


def test_a_new_session_starts_afresh() -> None:
    n = session()
    n.observe(AFTER_OPENING, "monitoring", "audio_only")
    assert n.observe(AFTER_OPENING + 10, "idle", "audio_only") == []
    later = AFTER_OPENING + 100
    assert n.observe(later, "monitoring", "audio_only") == []
    assert said(n.tick(later + OPENING_S)) == ["audio_only"]  # said again: a new session


def test_status_fields_take_the_clinic_number_as_dialled_at_home() -> None:
    doc = {"state": "monitoring", "recommendation": "phone", "fallback": {
        "name": "Riverside", "phone": "+442079460000", "phone_national": "020 7946 0000"}}
    assert status_fields(doc) == {"state": "monitoring", "recommendation": "phone",
                                  "phone": "020 7946 0000", "clinic": "Riverside"}
    assert status_fields({"fallback": "garbage"}) == {
        "state": "idle", "recommendation": "unknown", "phone": None, "clinic": None}


EVENT = st.tuples(st.floats(0.1, 400.0),
                  st.sampled_from(["video", "audio_only", "phone", "unknown"]),
                  st.sampled_from(["monitoring"] * 9 + ["idle"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=60))
def test_any_sequence_respects_the_rules(events: list[tuple[float, str, str]]) -> None:
    """At most one notice per event; never two alike in a row within a session; never when
    idle or before the opening; never `unknown`; a step up only after the hold."""
    n = Notices()
    now, last_told_at, told, started = T0, None, "video", None
    for gap, rec, state in events:
        now += gap
        for kind in ("tick", "observe"):
            due = n.next_deadline()
            if kind == "tick" and (due is None or due > now):
                continue
            out = n.tick(now) if kind == "tick" else n.observe(now, state, rec)
            if state == "idle" and kind == "observe":
                told, last_told_at, started = "video", None, None
                assert out == []
                continue
            if started is None and kind == "observe":
                started = now
            assert len(out) <= 1
            for notice in out:
                assert started is not None and now >= started + OPENING_S
                assert notice.verdict != told and notice.verdict in ("video", "audio_only",
                                                                     "phone")
                order = ["video", "audio_only", "phone"]
                if order.index(notice.verdict) < order.index(told):
                    assert last_told_at is not None and now >= last_told_at + HOLD_UP_S
                told, last_told_at = notice.verdict, now
