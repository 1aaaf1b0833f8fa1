"""The agent's policy under any sequence of events (hypothesis): the promises that must
hold whatever happens, checked after every step. Pure: no real time, no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy import Drive, Readings, result

from netprobe.core.classify import AUDIO_ONLY, UNKNOWN, VIDEO
from netprobe.core.policy_events import (
    Action,
    CheckFailed,
    CheckFinished,
    CheckRequested,
    Event,
    MonitorConnected,
    MonitorConnectFailed,
    MonitorEnded,
    PassiveSampled,
    Purpose,
    SessionStartRequested,
    SessionStopRequested,
    SettingsChanged,
    StartCheck,
    StartMonitor,
    StopMonitor,
)

STEPS = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.floats(0.01, 40)),
    st.tuples(st.just("echoes"), st.floats(0.1, 8)),
    st.tuples(st.sampled_from(["start", "stop", "manual", "check_ok", "check_audio",
                               "check_unreachable", "check_failed", "connect_failed", "ended",
                               "old_link", "cpu_high", "cpu_low", "iface_down", "reload"]),
              st.just(0.0)),
    # what makes a session go on comes more often, so that most runs reach the windows
    st.tuples(st.sampled_from(["connected", "check_ok", "start"]), st.just(0.0)),
    st.tuples(st.just("echoes"), st.floats(1, 30)),
), min_size=5, max_size=60)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, jitter=st.floats(-1, 1))
def test_any_sequence_of_events_keeps_the_promises(steps: list[tuple[str, float]],
                                                   jitter: float) -> None:
    """Whatever happens: one check at a time, one probe stream at a time, a Tick always moves
    the deadline on, an idle agent always has its next check scheduled, and "monitoring" always
    has something going on (a check, a stream, or a reconnection due)."""
    d = Drive(jitter, backoff_min_s=1.0, backoff_max_s=8.0, max_session_s=120.0,
              step_up_after_s=5.0, idle_interval_s=30.0)
    d.start()
    running: Purpose | None = None
    open_links: set[int] = set()
    connecting: set[int] = set()

    def apply(out: list[Action]) -> None:
        nonlocal running
        for a in out:
            if isinstance(a, StartCheck):
                assert running is None, "a second check while one runs"
                running = a.purpose
            elif isinstance(a, StartMonitor):
                assert not open_links, "a second probe stream"
                open_links.add(a.link)
                connecting.add(a.link)
            elif isinstance(a, StopMonitor):
                open_links.discard(a.link)
                connecting.discard(a.link)

    def finish(event: Event) -> None:
        nonlocal running
        running = None
        apply(d.feed(event))

    for kind, value in steps:
        link = next(iter(open_links), None)
        if kind == "wait":
            apply(d.until(d.now + value))
        elif kind == "echoes":
            if link in connecting:  # an echo means the stream is up
                connecting.discard(link)
                apply(d.feed(MonitorConnected(d.now, link)))
            if link is not None and link in open_links:
                apply(d.echoes(value))
            else:
                apply(d.until(d.now + value))
        elif kind == "start":
            apply(d.feed(SessionStartRequested(d.now)))
        elif kind == "stop":
            apply(d.feed(SessionStopRequested(d.now)))
        elif kind == "manual":
            apply(d.feed(CheckRequested(d.now)))
        elif kind.startswith("check_") and running is not None:
            d.now += 0.5
            if kind == "check_failed":
                finish(CheckFailed(d.now, running, "boom"))
            else:
                res = {"check_ok": result(VIDEO), "check_audio": result(AUDIO_ONLY, kbps=300),
                       "check_unreachable": result(UNKNOWN, connected=False)}[kind]
                finish(CheckFinished(d.now, running, res))
        elif kind in ("connected", "connect_failed") and link in connecting:
            assert link is not None
            connecting.discard(link)
            if kind == "connected":
                apply(d.feed(MonitorConnected(d.now, link)))
            else:
                open_links.discard(link)
                apply(d.feed(MonitorConnectFailed(d.now, link, "ServerUnreachable")))
        elif kind == "ended" and link is not None:
            open_links.discard(link)
            connecting.discard(link)
            apply(d.feed(MonitorEnded(d.now, link)))
        elif kind == "old_link":
            assert d.feed(MonitorEnded(d.now, d.policy.link - 1)) == []
            assert d.feed(MonitorConnected(d.now, d.policy.link + 7)) == []
        elif kind in ("cpu_high", "cpu_low", "iface_down"):
            readings = Readings(cpu_percent=97.0 if kind == "cpu_high" else 5.0,
                                interface_up=kind != "iface_down")
            apply(d.feed(PassiveSampled(d.now, readings,
                                        "interface_down" if kind == "iface_down" else None)))
        elif kind == "reload":
            apply(d.feed(SettingsChanged(d.now, d.settings)))

        p = d.policy
        assert (p.check_running is None) == (running is None)
        assert (p.state == "monitoring") == (p.phase is not None) == (
            p.session_started_at is not None)
        assert p.link_open == bool(open_links)
        if p.state == "idle":
            assert not open_links
            assert running is not None or p.next_deadline() is not None
        elif p.phase == "checking":
            assert running is not None
        elif p.phase == "waiting":
            assert not open_links and p.next_deadline() is not None
        else:
            assert open_links == {p.link}, p.phase
        doc = d.status()
        assert doc["state"] == p.state and doc["recommendation"] in (
            VIDEO, AUDIO_ONLY, "phone", UNKNOWN)
        assert doc["check_running"] == (running is not None)
