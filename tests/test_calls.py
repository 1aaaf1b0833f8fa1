"""Calls noticed by themselves: the pure detector (`netprobe.core.calls`) on made-up counter
readings, and the policy's side (a detected call monitored without a loaded check, ended by
the call, never by an API session's; no idle check during either), the psutil adapter on this
machine's real sockets and counters, and the setting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from netprobe.agent.calls import scan as scan_for_calls
from netprobe.agent.passive import PassiveSampler
from netprobe.config import Settings, load_settings
from netprobe.core import calls
from netprobe.core import policy_events as ev
from netprobe.core.calls import CallChange, CallDetector, Evidence, TrafficSample
from netprobe.core.policy import AgentPolicy
from netprobe.errors import ConfigError

KBIT = 1000 // 8  # bytes per second of 1 kbit/s


class Link:
    """Cumulative counters of an interface, one reading a second."""

    def __init__(self, det: CallDetector | None = None) -> None:
        self.det = det or CallDetector()
        self.now, self.rx, self.tx = 100.0, 10_000_000, 5_000_000

    def run(self, seconds: int, up_kbps: float, down_kbps: float, **kw: object
            ) -> Iterator[tuple[float, CallChange | None]]:
        for _ in range(seconds):
            self.now += 1.0
            self.rx += int(down_kbps * KBIT)
            self.tx += int(up_kbps * KBIT)
            yield self.now, self.det.sample(TrafficSample(self.now, self.rx, self.tx, **kw))

    def changes(self, seconds: int, up: float, down: float, **kw: object
                ) -> list[tuple[float, CallChange]]:
        return [(t, c) for t, c in self.run(seconds, up, down, **kw) if c is not None]


def test_a_video_call_starts_within_seconds_and_ends_after_the_quiet_time() -> None:
    link = Link()
    assert link.changes(30, 5, 20) == []  # an idle machine
    t0 = link.now
    started = link.changes(20, 800, 1200)
    assert len(started) == 1 and started[0][1].started and started[0][1].kind == "traffic"
    assert started[0][0] - t0 <= calls.START_AFTER_S
    assert link.det.in_call
    t1 = link.now
    ended = link.changes(60, 5, 20)
    assert len(ended) == 1 and not ended[0][1].started
    assert calls.END_AFTER_S <= ended[0][0] - t1 <= calls.END_AFTER_S + 1
    assert not link.det.in_call


def test_a_call_moved_to_voice_goes_on_and_short_dips_do_not_end_it() -> None:
    link = Link()
    assert [c.started for _, c in link.changes(10, 600, 600)] == [True]
    assert link.changes(120, 45, 50) == []  # audio only, as the agent may advise
    for _ in range(5):  # a frozen picture now and then
        assert link.changes(int(calls.END_AFTER_S) - 2, 0, 0) == []
        assert link.changes(3, 400, 400) == []
    assert link.det.in_call


@pytest.mark.parametrize(("up", "down", "what"), [
    (250, 20_000, "a 20 Mbit/s download, its ACKs above 150 kbit/s"),
    (8_000, 300, "an upload (a backup) with its ACKs"),
    (60, 3_000, "a video being watched"),
    (50, 55, "a voice call below the start threshold"),
    (110, 110, "two-way traffic just under the threshold"),
])
def test_one_way_or_small_traffic_is_not_a_call(up: float, down: float, what: str) -> None:
    link = Link()
    assert link.changes(120, up, down) == [], what


def test_short_bursts_are_not_a_call() -> None:
    link = Link()
    for _ in range(20):  # web pages, a sync: 3 s of heavy two-way traffic, then calm
        assert link.changes(int(calls.START_AFTER_S) - 1, 2_000, 3_000) == []
        assert link.changes(2, 10, 30) == []


def test_netprobes_own_check_is_never_a_call() -> None:
    link = Link()
    # an idle check: up to 1.6 Mbit/s each way for 10 s, then its tail
    assert link.changes(10, 1_600, 1_600, own_busy=True) == []
    assert link.changes(int(calls.OWN_MARGIN_S) - 1, 1_600, 1_600) == []
    # the monitoring stream's own rate is subtracted
    assert link.changes(60, 140, 150, own_kbps=(30.0, 40.0)) == []


def test_a_check_neither_starts_nor_ends_a_call() -> None:
    link = Link()
    assert len(link.changes(10, 700, 700)) == 1
    assert link.changes(int(calls.END_AFTER_S) + 10, 0, 0, own_busy=True) == []
    assert link.det.in_call  # the call's quiet time is counted after the check
    assert len(link.changes(int(calls.END_AFTER_S + calls.OWN_MARGIN_S) + 2, 0, 0)) == 1


def test_corroboration_shortens_and_its_absence_lengthens_the_wait() -> None:
    def start_after(evidence: Evidence) -> float:
        link = Link()
        link.changes(1, 5, 5)
        t0 = link.now
        started = link.changes(30, 900, 900, evidence=evidence)  # (the scan with each reading)
        assert len(started) == 1 and started[0][1].started
        return started[0][0] - t0
    udp = start_after(Evidence(visible=True, udp=True))
    app = start_after(Evidence(visible=True, conferencing=("zoom",)))
    blind = start_after(Evidence(visible=False))
    neither = start_after(Evidence(visible=True))
    assert udp <= calls.START_AFTER_S + 1 and app <= calls.START_AFTER_S + 1
    assert blind <= calls.START_AFTER_S + 1  # no permission: traffic alone decides
    assert calls.UNCORROBORATED_AFTER_S - 1 <= neither <= calls.UNCORROBORATED_AFTER_S + 1
    assert neither <= 15  # a TCP-only call is still noticed within the target


def test_evidence_is_asked_for_only_when_traffic_looks_like_a_call() -> None:
    link = Link()
    asked = [link.det.wants_evidence(t) for t, _ in link.run(60, 40, 300)]
    assert not any(asked)
    link.changes(1, 800, 800)
    assert link.det.wants_evidence(link.now)
    link.changes(1, 800, 800, evidence=Evidence(visible=True, udp=True))
    assert not link.det.wants_evidence(link.now)  # fresh for EVIDENCE_FOR_S


def test_counter_resets_and_gaps_start_counting_afresh() -> None:
    link = Link()
    link.changes(3, 800, 800)
    link.rx = link.tx = 0  # the interface was re-created
    assert link.changes(2, 800, 800) == []
    link.now += 60  # suspended
    assert link.changes(2, 800, 800) == []
    assert len(link.changes(5, 800, 800)) == 1


# -- the policy --------------------------------------------------------------------------------


class Quiet:
    interface_up = True
    interface_index = None
    cpu_percent = 5.0
    rx_kbps = tx_kbps = None

    def to_json(self) -> dict[str, object]:
        return {}


def policy(detect: str = "on") -> AgentPolicy:
    s = Settings()
    s = replace(s, agent=replace(s.agent, server="http://127.0.0.1:9", detect_calls=detect,
                                 idle_interval_s=10.0, idle_jitter=0.0))
    p = AgentPolicy(s, Quiet(), jitter=lambda: 0.0)
    p.handle(ev.Started(0.0))
    return p


def kinds(actions: list[ev.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_detected_call_streams_without_a_loaded_check_and_ends_with_the_call() -> None:
    p = policy()
    out = p.handle(ev.CallStarted(5.0, "udp", ("zoom",)))
    assert p.state == "monitoring" and p.session_source == "detected"
    assert "StartCheck" not in kinds(out) and "StartMonitor" in kinds(out)
    logged = {a.event: a.fields for a in out if isinstance(a, ev.Log)}
    assert logged["call_detected"] == {"kind": "udp", "processes": []}  # names: not logged
    assert logged["session_started"] == {"session_source": "detected"}
    assert p.status_document(6.0, 0.0, "x")["session_source"] == "detected"
    for t in range(6, 200):  # no idle check while the call runs
        assert "StartCheck" not in kinds(p.handle(ev.Tick(float(t))))
    out = p.handle(ev.CallEnded(200.0))
    assert p.state == "idle" and p.session_source is None
    stopped = [a for a in out if isinstance(a, ev.Log) and a.event == "session_stopped"]
    assert stopped[0].fields["reason"] == "call_ended"
    assert stopped[0].fields["session_source"] == "detected"


def test_process_names_are_logged_only_when_allowed() -> None:
    p = policy()
    p.settings = replace(p.settings, privacy=replace(p.settings.privacy,
                                                     log_process_names=True))
    out = p.handle(ev.CallStarted(5.0, "conferencing", ("zoom",)))
    assert [a.fields["processes"] for a in out if isinstance(a, ev.Log)
            and a.event == "call_detected"] == [["zoom"]]


def test_an_api_session_is_never_ended_by_detection_and_takes_a_detected_one_over() -> None:
    p = policy()
    p.handle(ev.CallStarted(5.0))
    p.handle(ev.SessionStartRequested(6.0))
    assert p.session_source == "api"
    p.handle(ev.CallEnded(30.0))
    assert p.state == "monitoring" and p.session_source == "api"
    q = policy()
    q.handle(ev.SessionStartRequested(5.0))
    q.handle(ev.CallStarted(6.0))
    assert q.session_source == "api"
    q.handle(ev.CallEnded(40.0))
    assert q.state == "monitoring"
    for t in range(41, 300):  # no idle check during an API session either
        actions = q.handle(ev.Tick(float(t)))
        assert not [a for a in actions if isinstance(a, ev.StartCheck) and a.purpose == "idle"]


def test_detection_off_starts_nothing() -> None:
    p = policy("off")
    out = p.handle(ev.CallStarted(5.0))
    assert p.state == "idle" and "StartMonitor" not in kinds(out)


# -- the psutil side and the settings ----------------------------------------------------------


def test_a_bad_detect_calls_value_is_refused_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.toml"
    path.write_text('[agent]\ndetect_calls = "maybe"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value)
    assert 'detect_calls: must be "off" or "on"' in str(err.value)
    assert load_settings(None).agent.detect_calls == "on"


def test_the_watched_interface_can_be_named_and_its_counters_are_read() -> None:
    sampler = PassiveSampler("lo")
    sampler.sample()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x" * 1000, ("127.0.0.1", 9))
    sampler.sample()
    st = sampler.state
    assert st.interface_up and st.rx_bytes is not None and st.tx_bytes is not None
    assert st.tx_bytes >= 1000 and "rx_bytes" not in st.to_json()


def test_a_scan_sees_another_programs_udp_socket_but_not_its_own() -> None:
    baseline = scan_for_calls()
    if not baseline.visible:
        pytest.skip("this system does not show the socket table")
    if baseline.udp:
        pytest.skip("other programs hold media-like UDP sockets here already")
    holder = ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.bind(('0.0.0.0', 0)); print('ready', flush=True); time.sleep(30)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mine:
        mine.bind(("0.0.0.0", 0))  # this process and its child: netprobe's own
        child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            alone = scan_for_calls()
            # another program, not a child of this one: started by a shell that exits at once
            pid = int(subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{holder}" '
                                      '>/dev/null 2>&1 & echo $!'], capture_output=True,
                                     text=True, check=True).stdout)
            try:
                seen = alone
                for _ in range(50):  # until its socket is open
                    seen = scan_for_calls()
                    if seen.udp:
                        break
                    time.sleep(0.1)
            finally:
                os.kill(pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
    assert alone.visible and not alone.udp
    assert seen.visible and seen.udp
