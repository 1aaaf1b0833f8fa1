"""Deterministic discrete-event simulation of a whole netprobe check over an emulated link.

Pure Python: the link and the event engine are in `simnet.py`; no sockets, no clock, no
asyncio. The two ends run the project's real pure objects, driven the way the adapters
drive them, with nothing of their logic copied here:

client (`netprobe/webrtc/client.py: run_check`)
    * the session is created once the connection is up (`connect_s` after the check began),
      with the engine's deadline `session.check_deadline(t0, settings)` (client clock);
    * two pacers, each driving a `core.pacing.Timetable` exactly as the asyncio `Pacer`
      does: probes (`encode_probe(session.next_probe(now), probe_size)` every
      `session.probe_interval` s) and uplink load (`session.up_rung(now)`, one packet of
      `encode_load(session.next_up_load(rung, now), rung.payload_size)` every
      `rung.interval` s); a paused pacer waits until it is woken, never polls;
    * the receive taps feed echoes to `session.on_echo` and load to
      `session.on_down_load(load, len(payload), now)`, swallowing exceptions;
    * the control loop calls `session.step(now)` on every echo and at the time `step`
      returned, wakes the pacers after each step, and ends when `step` returns None; then
      `session.metrics()` and `classify(metrics, thresholds)`.

reflector (`netprobe/webrtc/reflector.py: ReflectorSession`)
    * its downlink pacer starts when the offer is handled (before the client's session
      exists), paused until a probe wakes it; its schedule is `responder.down_request(now)`
      (the responder times each rung itself), packets of `request.packet_size` every
      `request.interval` s, each from `responder.next_down_load`;
    * each probe goes to `responder.on_probe(probe, now)` and is answered at once with
      `encode_echo(responder.echo(probe, now, now))`;
    * uplink load goes to `responder.on_up_load(load, len(payload), now)`.

The harness also records the truth it needs for its oracles, outside netprobe's code: the
fate of every probe, echo and load packet on the link (`random`, `queue` or `ok`), each
echo the client got, and RFC 3550 jitter of the link's real transits at every echo
(`SimResult.loss_truth`, `true_loss_pct`, `true_jitter_ms`). It reads only public ladder
state (`results`, `loaded_windows()`) to know which packets netprobe's figures count, and
applies the counting rules itself (`SimResult.counted_rungs`), so that a bug in the
ladder's own helpers (`near_capacity`) shows up as a mismatch.

Packets are sent the moment a pacer pushes them (no sender-side delay). The client and the
reflector have different clocks (each a constant offset from the simulated time), as two
machines' monotonic clocks would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simnet import (
    P_PACER,
    P_TICK,
    Clock,
    Direction,
    DirectionStats,
    LinkDirection,
    LinkSpec,
    Simulator,
    symmetric,
    with_rates,
)

from netprobe.config import ProbeSettings, load_thresholds
from netprobe.core.classify import Thresholds, Verdict, classify
from netprobe.core.measure import (
    LOAD_OVERHEAD_BYTES,
    PROBE_OVERHEAD_BYTES,
    JitterEstimator,
    percentile,
    round_trip_s,
)
from netprobe.core.metrics import LinkMetrics
from netprobe.core.pacing import Timetable
from netprobe.core.responder import Responder
from netprobe.core.session import JITTER_WARMUP, ClientSession, check_deadline
from netprobe.core.wire import (
    TYPE_ECHO,
    TYPE_LOAD,
    TYPE_PROBE,
    decode_echo,
    decode_load,
    decode_probe,
    encode_echo,
    packet_type,
)

#: `netprobe/webrtc/engine.py: Pacer` default.
PACER_MAX_LAG_S = 0.05

PayloadBuilder = Callable[[float], bytes]


class SimPacer:
    """The asyncio `Pacer` on simulated time: the same `Timetable`, the track sends at once;
    paused until `wake`."""

    def __init__(self, sim: Simulator, clock: Clock,
                 schedule: Callable[[float], tuple[float, PayloadBuilder] | None],
                 send: Callable[[bytes], None], max_lag: float = PACER_MAX_LAG_S) -> None:
        self.sim = sim
        self.clock = clock
        self.schedule = schedule
        self.send = send
        self._timetable: Timetable[PayloadBuilder] = Timetable(max_lag)
        self.running = False
        self._paused = False
        self.sent = 0
        self.wakeups = 0
        """Times the pacer ran (each packet sent, or a wake while paused)."""

    def start(self, t: float) -> None:
        self.running = True
        self.sim.at(t, P_PACER, self._run)

    def stop(self) -> None:
        self.running = False

    def wake(self, t: float) -> None:
        if self.running and self._paused:
            self._paused = False
            self.sim.at(t, P_PACER, self._run)

    def _run(self, t: float) -> None:
        if not self.running:
            return
        self.wakeups += 1
        now = self.clock(t)
        build, next_at = self._timetable.advance(now, self.schedule)
        if build is not None:
            self.send(build(now))  # PacketTrack.recv() builds the payload as aiortc sends
            self.sent += 1
        if next_at is None:
            self._paused = True
        else:
            self.sim.at(t + max(0.0, next_at - now), P_PACER, self._run)


# ------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class EchoSeen:
    """An echo as the client received it (first copy), with the link's truth at that time."""

    seq: int
    probe_sent_at: float
    """Client clock: when the answered probe left."""
    up_highest: int
    up_received: int
    arrived: float
    """Simulated time of arrival."""
    true_up_jitter_ms: float
    """RFC 3550 jitter of the probes the reflector had received when it sent this echo,
    from the link's own send and arrival times."""
    true_down_jitter_ms: float
    """RFC 3550 jitter of the echoes the client had received, this one included."""
    rtt: float
    """Round trip in seconds as the client reckons it (its clock at arrival, minus the
    probe's send time, minus the reflector's hold)."""
    probe_seq: int = -1
    """The answered probe's number."""


@dataclass
class SimResult:
    link: LinkSpec
    verdict: Verdict
    metrics: LinkMetrics
    session: ClientSession
    responder: Responder
    stopped_by: str
    """`finished` (the session said so), `deadline` (the cap) or `eof` (nothing left);
    `session.stop_reason` says more."""
    stopped_early: bool
    """As `webrtc/client.py: run_check` computes it."""
    session_s: float
    """Simulated seconds from the session's start to the verdict."""
    total_s: float
    """Simulated seconds from the check's start (connection set-up included)."""
    up: DirectionStats
    down: DirectionStats
    up_transits: dict[str, list[tuple[float, float]]]
    down_transits: dict[str, list[tuple[float, float]]]
    up_fates: dict[tuple[str, int], str]
    down_fates: dict[tuple[str, int], str]
    echoes: list[EchoSeen]
    """Echoes the client's session got, in order of arrival."""
    iteration_cpu: list[tuple[float, float]]
    """(simulated time, CPU seconds) of each control-loop iteration's calls into the
    session (`step`, `progress`): the engine runs them in its event loop."""
    probe_slowdowns: list[tuple[float, float, bool]]
    """(client clock, new `session.probe_interval`, flooded) at each control-loop iteration
    that changed the probe spacing, as the harness saw it. `flooded`: the ladder had not
    started yet, so the probes alone were flooding the link (`_slow_probes_to_echo_spacing`);
    otherwise a failed rung showed the link too slow for them (`_pace_probes`)."""
    errors: list[str]
    """Exceptions the receive taps swallowed (the engine logs and drops them)."""
    settings: ProbeSettings
    client_clock: float
    reflector_clock: float

    def ladder(self, name: str) -> list[tuple[float, float | None, bool]]:
        lad = getattr(self.session, name)
        return [(r.rung.rate_kbps, r.delivered_kbps, r.passed)
                for _, r in sorted(lad.results.items())]

    def reason_codes(self) -> list[str]:
        return [r.code for r in self.verdict.reasons]

    # -- the truth, on the packets netprobe's figures are defined on --------------------

    def _ladder(self, direction: str) -> Any:
        return self.session.up if direction == "up" else self.session.down

    def loaded_windows(self, direction: str) -> list[tuple[float, float]]:
        """The periods (client clock) the figures of `direction` leave out, as
        `core.sampling.analyse` defines them: the ladder's `loaded_windows()`, plus, if the
        probes alone flooded the link, everything from the session's start to the last
        time they were slowed down for it (`probe_slowdowns`); each window then extended by
        the queueing delay seen in it (the highest RTT of a probe sent in it above the least
        RTT of all: a queue takes that long to drain). RTTs and slowdowns are the harness's
        own records, not the session's."""
        windows = list(self._ladder(direction).loaded_windows())
        floods = [at for at, _, flooded in self.probe_slowdowns if flooded]
        if floods:
            windows.append((self.session.started_at, floods[-1]))
        if not self.echoes or not windows:
            return windows
        base = min(e.rtt for e in self.echoes)
        return [(ws, we + max((e.rtt for e in self.echoes if ws <= e.probe_sent_at <= we),
                              default=base) - base)
                for ws, we in windows]

    def calm(self, start: float, end: float, direction: str) -> bool:
        """[start, end] (client clock) meets none of `loaded_windows(direction)`."""
        return not any(ws <= end and start <= we for ws, we in self.loaded_windows(direction))

    def counted_rungs(self, direction: str) -> list[int]:
        """Rungs whose load the loss figure counts (`core.sampling.analyse`): those that
        passed *well below* capacity. A passed rung right before a failed one ran close to
        the link's capacity (`Ladder.near_capacity`, which this mirrors from `results`
        alone): it may have filled the queue, so it is a loaded window, not counted; so is a
        rung that passed only thanks to the allowance for random loss (`loss_allowed`)."""
        results = self._ladder(direction).results
        return sorted(i for i, r in results.items()
                      if r.passed and not r.loss_allowed
                      and not (i + 1 in results and not results[i + 1].passed))

    def counted_packets(self, direction: str) -> list[tuple[str, int]]:
        """The packets the loss figure counts (`core.sampling.analyse`): probes (up) or
        echoes (down) of calm stretches between consecutive echoes (a stretch is calm if it
        meets no loaded window of that direction's ladder), plus the load of
        `counted_rungs`. Read from what the client received and the ladders' windows, not
        from the session's own counters."""
        out: list[tuple[str, int]] = []
        prev_seq, prev_t, prev_hi = -1, self.session.started_at, -1
        # the uplink counts from the first report that settled every probe before the first
        # one known to have arrived (analyse)
        start = min((e.probe_seq for e in self.echoes if e.probe_seq >= 0), default=0)
        based = False
        for e in sorted(self.echoes, key=lambda x: x.seq):
            if not based:
                if e.up_highest >= start - 1:
                    based, prev_hi = True, e.up_highest
            elif self.calm(prev_t, e.probe_sent_at, "up") and e.up_highest > prev_hi:
                out += [("probe", k) for k in range(prev_hi + 1, e.up_highest + 1)] \
                    if direction == "up" else []
            if self.calm(prev_t, e.probe_sent_at, "down") and direction == "down":
                out += [("echo", k) for k in range(prev_seq + 1, e.seq + 1)]
            prev_seq, prev_t, prev_hi = e.seq, e.probe_sent_at, max(prev_hi, e.up_highest)
        fates = self.up_fates if direction == "up" else self.down_fates
        for i in self.counted_rungs(direction):
            out += [k for k in fates if k[0] == f"load:{i}"]
        return out

    def loss_truth(self, direction: str) -> dict[str, int]:
        """Fates on the link of the packets the loss figure counts."""
        fates = self.up_fates if direction == "up" else self.down_fates
        tally = {"counted": 0, "random": 0, "queue": 0, "ok": 0}
        for k in self.counted_packets(direction):
            tally["counted"] += 1
            tally[fates.get(k, "ok")] += 1
        return tally

    def true_loss_pct(self, direction: str) -> float | None:
        """Random loss the link really inflicted on the packets the figure counts (a queue
        drop there is self-inflicted loss that the figure should not contain)."""
        t = self.loss_truth(direction)
        return 100 * t["random"] / t["counted"] if t["counted"] else None

    def true_jitter_ms(self, direction: str) -> float | None:
        """netprobe's jitter figure computed on the link's truth: the median, over the same
        echoes (calm for `direction`, after the estimator's warm-up of
        `session.JITTER_WARMUP`), of the RFC 3550 jitter of the real transits."""
        values = [e.true_up_jitter_ms if direction == "up" else e.true_down_jitter_ms
                  for i, e in enumerate(self.echoes)
                  if i >= JITTER_WARMUP and self.calm(e.probe_sent_at, e.probe_sent_at,
                                                      direction)]
        return percentile(values, 50) if values else None

    def down_rung_sends(self) -> dict[int, tuple[int, float, float]]:
        """Per downlink rung: (packets the reflector sent, send times of the first and last
        delivered packet, simulated s)."""
        out = {}
        for kind, tr in self.down_transits.items():
            if kind.startswith("load:"):
                sent = self.down.sent.get(kind, 0)
                out[int(kind[5:])] = (sent, tr[0][0], tr[-1][0])
        return out


def simulate(link: LinkSpec, seed: int = 0, settings: ProbeSettings | None = None,
             thresholds: Thresholds | None = None, client_clock: float = 1000.0,
             reflector_clock: float = 73_421.377) -> SimResult:
    """Run one check over `link`; deterministic for a given seed."""
    cfg = settings or ProbeSettings()
    thr = thresholds or load_thresholds()
    sim = Simulator()
    c_clock, r_clock = Clock(client_clock), Clock(reflector_clock)
    uplink = LinkDirection(sim, link.up, "up", seed)
    downlink = LinkDirection(sim, link.down, "down", seed)
    errors: list[str] = []
    state: dict[str, Any] = {"session": None, "stopped_by": "eof", "stopped_early": False,
                             "end": None, "woken": False, "generation": 0}
    # The truth for jitter: RFC 3550 on the link's own send and arrival times.
    true_up_jitter, true_down_jitter = JitterEstimator(), JitterEstimator()
    up_jitter_at_echo: dict[int, float] = {}
    echoes_seen: list[EchoSeen] = []
    iteration_cpu: list[tuple[float, float]] = []
    probe_slowdowns: list[tuple[float, float, bool]] = []
    echo_seqs: set[int] = set()

    # --- reflector (ReflectorSession) ---------------------------------------------------
    responder = Responder()

    def reflector_send_audio(payload: bytes) -> None:
        seq, sent = decode_echo(payload).seq, sim.now
        up_jitter_at_echo[seq] = true_up_jitter.jitter * 1000
        downlink.send(len(payload) + PROBE_OVERHEAD_BYTES, "echo",
                      lambda t, p=payload: client_on_audio(p, t, sent), key=seq)

    def reflector_send_video(payload: bytes) -> None:
        downlink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                      lambda t, p=payload: client_on_video(p, t), key=decode_load(payload).seq)

    def reflector_on_audio(payload: bytes, t: float, sent: float) -> None:
        # ReflectorSession._on_audio: on_probe, then echo_track.push(factory); the factory
        # (responder.echo(probe, now, time.monotonic())) runs when the echo is sent: at once.
        try:
            now = r_clock(t)
            if packet_type(payload) != TYPE_PROBE:
                return
            probe = decode_probe(payload)
            true_up_jitter.update(sent, t)  # harness truth (no duplicates on this link)
            responder.on_probe(probe, now)
            reflector_pacer.wake(t)
            reflector_send_audio(encode_echo(responder.echo(probe, now, r_clock(sim.now))))
        except Exception as exc:  # install_tap swallows and logs
            errors.append(f"reflector audio: {exc!r}")

    def reflector_on_video(payload: bytes, t: float) -> None:
        try:
            if packet_type(payload) == TYPE_LOAD:
                responder.on_up_load(decode_load(payload), len(payload), r_clock(t))
        except Exception as exc:
            errors.append(f"reflector video: {exc!r}")

    # --- client (run_check) -------------------------------------------------------------

    def client_on_audio(payload: bytes, t: float, sent: float) -> None:
        session = state["session"]
        if session is None or state["end"] is not None:
            return
        try:
            if packet_type(payload) == TYPE_ECHO:
                echo = decode_echo(payload)
                if echo.seq not in echo_seqs:  # the harness's record (first copies)
                    echo_seqs.add(echo.seq)
                    true_down_jitter.update(sent, t)
                    echoes_seen.append(EchoSeen(
                        echo.seq, echo.probe_sent_at, echo.up_probes_highest,
                        echo.up_probes_received, t, up_jitter_at_echo[echo.seq],
                        true_down_jitter.jitter * 1000,
                        round_trip_s(c_clock(t), echo.probe_sent_at, echo.hold),
                        echo.probe_seq))
                session.on_echo(echo, c_clock(t))
                control_loop_woken(t)
        except Exception as exc:
            errors.append(f"client audio: {exc!r}")

    def client_on_video(payload: bytes, t: float) -> None:
        session = state["session"]
        if session is None or state["end"] is not None:
            return
        try:
            if packet_type(payload) == TYPE_LOAD:
                session.on_down_load(decode_load(payload), len(payload), c_clock(t))
        except Exception as exc:
            errors.append(f"client video: {exc!r}")

    def client_send_probe(payload: bytes) -> None:
        sent = sim.now
        uplink.send(len(payload) + PROBE_OVERHEAD_BYTES, "probe",
                    lambda t, p=payload: reflector_on_audio(p, t, sent),
                    key=decode_probe(payload).seq)

    def client_send_load(payload: bytes) -> None:
        uplink.send(len(payload) + LOAD_OVERHEAD_BYTES, _load_kind(payload),
                    lambda t, p=payload: reflector_on_video(p, t), key=decode_load(payload).seq)

    t_connect = link.connect_time_s
    # The reflector handles the offer about one RTT into the connection set-up (TCP
    # handshake, then the POST); its downlink pacer starts then, idle until probes arrive.
    t_offer = min(t_connect, link.base_rtt_ms / 1000 * 1.5 + 0.02)
    reflector_pacer = SimPacer(sim, r_clock, responder.down_step, reflector_send_video)
    reflector_pacer.start(t_offer)

    def start_session(t: float) -> None:
        session = ClientSession(cfg, thr, c_clock(t), check_deadline(c_clock(0.0), cfg))
        state["session"] = session
        pacers = [SimPacer(sim, c_clock, session.probe_step, client_send_probe),
                  SimPacer(sim, c_clock, session.up_load_step, client_send_load)]
        state["pacers"] = pacers
        for p in pacers:
            p.start(t)
        control_loop(t)

    def control_loop_woken(t: float) -> None:
        """An echo arrived: the control loop runs now (once, however many arrive at t)."""
        if state["end"] is None and not state["woken"]:
            state["woken"] = True
            sim.at(t, P_TICK, control_loop)

    def control_loop(t: float, generation: int | None = None) -> None:
        """One iteration of run_check's loop: `session.step(now)`, then wait for an echo
        or the time `step` returned (a timer superseded by an echo is stale)."""
        if state["end"] is not None or (generation is not None
                                        and generation != state["generation"]):
            return
        state["woken"] = False
        state["generation"] += 1
        session: ClientSession = state["session"]
        now = c_clock(t)
        interval, ladder_started = session.probe_interval, session.up.started
        cpu = time.process_time()
        wake_at = session.step(now)
        session.progress(now)
        iteration_cpu.append((t, time.process_time() - cpu))
        if session.probe_interval != interval:  # the harness's record (public attribute)
            probe_slowdowns.append((now, session.probe_interval, not ladder_started))
        if wake_at is None:
            state["stopped_by"] = "finished" if session.stop_reason != "deadline" \
                else "deadline"
            state["stopped_early"] = state["stopped_by"] == "finished" and \
                session.stopped_early
            return stop(t)
        for p in state["pacers"]:
            p.wake(t)
        g = state["generation"]
        sim.at(t + max(0.0, wake_at - now), P_TICK, lambda tt: control_loop(tt, g))

    def stop(t: float) -> None:
        state["end"] = t
        for p in state["pacers"]:
            p.stop()
        reflector_pacer.stop()
        sim.stopped = True

    sim.at(t_connect, P_TICK, start_session)
    sim.run(until=cfg.max_duration_s + 5)

    session = state["session"]
    assert session is not None, "the session never started (connect_s beyond the cap?)"
    end = state["end"] if state["end"] is not None else sim.now
    metrics = session.metrics()
    verdict = classify(metrics, thr)
    return SimResult(
        link=link, verdict=verdict, metrics=metrics, session=session, responder=responder,
        stopped_by=state["stopped_by"], stopped_early=state["stopped_early"],
        session_s=end - t_connect, total_s=end, up=uplink.stats, down=downlink.stats,
        up_transits=uplink.transits, down_transits=downlink.transits,
        up_fates=uplink.fates, down_fates=downlink.fates, echoes=echoes_seen,
        iteration_cpu=iteration_cpu, probe_slowdowns=probe_slowdowns, errors=errors,
        settings=cfg, client_clock=client_clock, reflector_clock=reflector_clock,
    )




def _load_kind(payload: bytes) -> str:
    """Link statistics key of a load packet: `load:<rung>` (read by the harness only)."""
    return f"load:{decode_load(payload).rung}"


__all__ = ["Direction", "EchoSeen", "LinkSpec", "SimResult", "simulate", "symmetric",
           "with_rates"]
