"""Tests for netprobe.config: defaults, custom files, and a ConfigError naming file and key for
every kind of bad file."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import pytest

from netprobe.config import (
    AgentSettings,
    IceServer,
    PrivacySettings,
    ProbeSettings,
    ReflectorSettings,
    Settings,
    config_dir,
    ice_url_problem,
    load_settings,
    load_thresholds,
    override,
)
from netprobe.core.classify import AudioThresholds, Thresholds, VideoThresholds
from netprobe.errors import ConfigError, NetprobeError


def write(tmp_path: Path, text: str, name: str = "netprobe.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def settings_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    return path, str(exc.value)


def thresholds_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text, "thresholds.toml")
    with pytest.raises(ConfigError) as exc:
        load_thresholds(path)
    return path, str(exc.value)


# ------------------------------------------------------------------------ defaults


def test_defaults_load() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.probe.ladder_kbps == (300, 800, 1600, 3200)
    assert s.reflector.host == "127.0.0.1"  # not listening on every interface by default
    assert s.privacy.log_addresses is False
    assert s.probe.ice_servers == ()  # no outside host contacted by default


def test_shipped_thresholds_file_exists_and_loads() -> None:
    path = config_dir() / "thresholds.toml"
    assert path.is_file()
    assert load_thresholds(path) == load_thresholds() == Thresholds()


def test_shipped_settings_file_shows_the_defaults() -> None:
    # config/netprobe.toml says "a missing key keeps the default shown here": the values it
    # shows must be the code's defaults, or the comment misleads.
    path = config_dir() / "netprobe.toml"
    assert path.is_file(), f"{path} is not shipped"
    assert load_settings(path) == Settings()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()
    assert load_thresholds(write(tmp_path, "", "t.toml")) == Thresholds()


def test_config_error_is_a_netprobe_error() -> None:
    assert issubclass(ConfigError, NetprobeError)


# ------------------------------------------------------------------------ custom files


def test_custom_settings_change_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
[probe]
max_duration_s = 20
ladder_kbps = [200, 500, 1000]
rung_duration_s = 0.4
probe_size = 80
ice_servers = [{urls = "stun:stun.example.org:3478"},
               {urls = "turn:turn.example.org", username = "u", credential = "c"}]

[reflector]
host = "0.0.0.0"
port = 9000
max_sessions = 2

[privacy]
log_addresses = true
""")
    s = load_settings(path)
    assert s.probe.max_duration_s == 20.0
    assert isinstance(s.probe.max_duration_s, float)  # whole number coerced to float
    assert s.probe.ladder_kbps == (200, 500, 1000)
    assert s.probe.rung_duration_s == 0.4
    assert s.probe.probe_size == 80
    assert s.probe.ice_servers == (
        IceServer("stun:stun.example.org:3478"),
        IceServer("turn:turn.example.org", "u", "c"),
    )
    # untouched settings keep their defaults
    assert s.probe.warmup_s == ProbeSettings().warmup_s
    assert s.reflector == ReflectorSettings(host="0.0.0.0", port=9000, max_sessions=2)
    assert s.privacy == PrivacySettings(log_addresses=True)
    assert s.thresholds == Thresholds()


def test_custom_thresholds_file(tmp_path: Path) -> None:
    t = write(tmp_path, "[video]\nmin_kbps = 800\ngood_kbps = 2000\n[audio]\nmin_mos = 3.3\n",
              "t.toml")
    th = load_thresholds(t)
    assert th.video == VideoThresholds(min_kbps=800, good_kbps=2000)
    assert th.audio == AudioThresholds(min_mos=3.3)
    s = load_settings(None, thresholds=t)
    assert s.thresholds == th


# ------------------------------------------------------------------------ bad files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_thresholds(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory") as exc:
        load_settings(tmp_path)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[probe]\n")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="permission") as exc:
            load_settings(path)
        assert str(path) in str(exc.value)
    finally:
        path.chmod(0o600)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[reflector]\nhost = \"caf\xe9\"\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


def test_bad_toml_names_line(tmp_path: Path) -> None:
    path, msg = settings_error(tmp_path, "[probe]\nwarmup_s = 0.5\nrung_pps = = 3\n")
    assert str(path) in msg
    assert "not valid TOML" in msg
    assert "line 3" in msg


def test_bad_toml_in_thresholds_names_line(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[video]\n\n\n\nmin_kbps = 600 600\n")
    assert str(path) in msg and "line 5" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("[probe]\nwarmupp_s = 1\n", "warmupp_s"),
        ("[reflector]\nhostname = \"x\"\n", "hostname"),
        ("[privacy]\nlog_ips = true\n", "log_ips"),
        ("[probe]\nice_servers = [{url = \"stun:x\"}]\n", "url"),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg
    assert repr(key) in msg
    assert "unknown setting" in msg
    assert "known:" in msg  # and lists what is allowed


def test_unknown_threshold_key(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[video]\nmin_kbs = 600\n")
    assert str(path) in msg and "'min_kbs'" in msg and "video" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("[reflector]\nport = \"8765\"\n", "reflector.port"),
        ("[reflector]\nport = 80.5\n", "reflector.port"),
        ("[reflector]\nmax_sessions = true\n", "reflector.max_sessions"),
        ("[probe]\nmax_duration_s = \"15\"\n", "probe.max_duration_s"),
        ("[probe]\nmax_duration_s = true\n", "probe.max_duration_s"),
        ("[probe]\nladder_kbps = 300\n", "probe.ladder_kbps"),
        ("[probe]\nladder_kbps = [300, \"800\"]\n", "probe.ladder_kbps[1]"),
        ("[privacy]\nlog_addresses = 1\n", "privacy.log_addresses"),
        ("[reflector]\nhost = 127\n", "reflector.host"),
        ("[probe]\nice_servers = [\"stun:x\"]\n", "probe.ice_servers[0]"),
        ("probe = 3\n", "probe"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg
    assert key in msg
    assert "expected" in msg


def test_wrong_type_in_thresholds(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[audio]\nmin_mos = \"high\"\n")
    assert str(path) in msg and "audio.min_mos" in msg and "expected a number" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("[probe]\nwarmup_s = -0.5\n", "probe.warmup_s"),
        ("[probe]\nprobe_size = -1\n", "probe.probe_size"),
        ("[reflector]\nsession_timeout_s = -3\n", "reflector.session_timeout_s"),
    ],
)
def test_negative_number(tmp_path: Path, text: str, key: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg and key in msg and "negative" in msg


def test_negative_threshold(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[video]\nmax_rtt_ms = -300\n")
    assert str(path) in msg and "video.max_rtt_ms" in msg and "negative" in msg


@pytest.mark.parametrize("text", ["[debug]\nx = 1\n", "verbose = true\n"])
def test_unknown_section(tmp_path: Path, text: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg and "unknown section" in msg
    assert "[probe]" in msg  # lists the known ones


def test_unknown_section_in_thresholds(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[phone]\nmin_kbps = 1\n")
    assert str(path) in msg and "[phone]" in msg


@pytest.mark.parametrize("ladder", ["[800, 300]", "[300, 1600, 800]", "[]"])
def test_ladder_not_rising(tmp_path: Path, ladder: str) -> None:
    path, msg = settings_error(tmp_path, f"[probe]\nladder_kbps = {ladder}\n")
    assert str(path) in msg and "probe.ladder_kbps" in msg and "higher than the last" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("[reflector]\nport = 0\n", "reflector.port"),
        ("[reflector]\nport = 70000\n", "reflector.port"),
        ("[reflector]\nmax_sessions = 0\n", "reflector.max_sessions"),
        ("[probe]\nmax_duration_s = 1.5\n", "probe.max_duration_s"),
        ("[probe]\nprobe_interval_ms = 1\n", "probe.probe_interval_ms"),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, key: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg and key in msg


def test_video_good_below_min(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[video]\nmin_kbps = 800\ngood_kbps = 700\n")
    assert str(path) in msg and "video.good_kbps" in msg


def test_bad_thresholds_file_fails_load_settings(tmp_path: Path) -> None:
    t = write(tmp_path, "[video]\nmin_kbps = -1\n", "t.toml")
    with pytest.raises(ConfigError, match="video.min_kbps"):
        load_settings(write(tmp_path, ""), thresholds=t)


# ------------------------------------------------------------------------ gaps (bugs)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[probe]\nladder_kbps = [0, 800]\n", "ladder_kbps"),
        ("[probe]\nladder_kbps = [-300, 800]\n", "ladder_kbps"),
        ("[probe]\nrung_pps = 0\n", "rung_pps"),
    ],
)
def test_settings_the_probe_cannot_run_with_are_rejected(
    tmp_path: Path, text: str, key: str
) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg and key in msg


def test_nan_threshold_rejected(tmp_path: Path) -> None:
    path, msg = thresholds_error(tmp_path, "[video]\nmax_loss_pct = nan\n")
    assert "max_loss_pct" in msg


@pytest.mark.parametrize(
    "text",
    [
        "[audio]\nmin_kbps = 100\ngood_kbps = 50\n",
        "[audio]\nmin_mos = 3.5\ngood_mos = 3.0\n",
        "[video]\nmax_loss_pct = 2\ngood_loss_pct = 5\n",
    ],
)
def test_inconsistent_thresholds_rejected(tmp_path: Path, text: str) -> None:
    thresholds_error(tmp_path, text)


# ------------------------------------------------------------------------ every key, wrong type

SECTIONS = {"probe": ProbeSettings, "reflector": ReflectorSettings, "privacy": PrivacySettings,
            "agent": AgentSettings}
# A TOML value of the wrong type for each kind of setting: what a hand-edited file gets wrong.
WRONG_VALUE = {bool: '"yes"', int: "2.5", float: '"fast"', str: "42"}


def wrong_value(hint: object) -> str:
    for kind, value in WRONG_VALUE.items():
        if hint is kind or hint == kind | None:
            return value
    return "{ a = 1 }"  # a list (ladder, ice_servers, cors_origins) given a table


def every_key() -> list[tuple[str, str, str]]:
    cases = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        cases += [(section, f.name, wrong_value(hints[f.name])) for f in dataclasses.fields(cls)]
    return cases


@pytest.mark.parametrize(("section", "key", "value"), every_key())
def test_every_key_with_a_wrong_type_names_file_line_and_key(
        tmp_path: Path, section: str, key: str, value: str) -> None:
    path, msg = settings_error(tmp_path, f"# settings\n[{section}]\n{key} = {value}\n")
    assert msg.startswith(f"{path}: line 3: {section}.{key}")
    assert "expected" in msg


@pytest.mark.parametrize(("section", "key"), [
    (section, f.name) for section, cls in (("video", VideoThresholds), ("audio", AudioThresholds))
    for f in dataclasses.fields(cls)])
def test_every_threshold_with_a_wrong_type_names_file_and_key(
        tmp_path: Path, section: str, key: str) -> None:
    path, msg = thresholds_error(tmp_path, f"[{section}]\n{key} = \"high\"\n")
    assert str(path) in msg and f"{section}.{key}" in msg and "expected a number" in msg


def test_an_unreadable_device_is_a_config_error(tmp_path: Path) -> None:
    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(Path("/proc/self/mem"))


@pytest.mark.parametrize(("text", "key"), [
    ('[reflector]\nhost = ""\n', "reflector.host"),  # would listen on every interface
    ("[reflector]\nmonitor_timeout_s = 0\n", "reflector.monitor_timeout_s"),
    ("[agent]\nbackoff_min_s = 0\n", "agent.backoff_min_s"),
    ("[agent]\nbackoff_min_s = 10\nbackoff_max_s = 5\n", "agent.backoff_max_s"),
])
def test_more_values_out_of_range(tmp_path: Path, text: str, key: str) -> None:
    path, msg = settings_error(tmp_path, text)
    assert str(path) in msg and key in msg


# ------------------------------------------------------------------------ ICE server URLs

GOOD_ICE = [
    '{ urls = "stun:stun.example.org" }',
    '{ urls = "stun:192.0.2.7:3478" }',
    '{ urls = "turn:turn.example.org:3478", username = "u", credential = "p" }',
    '{ urls = "turn:turn.example.org?transport=tcp", username = "u", credential = "p" }',
    '{ urls = "turns:turn.example.org:5349?transport=tcp", username = "u", credential = "p" }',
]


@pytest.mark.parametrize("server", GOOD_ICE)
@pytest.mark.parametrize("section", ["probe", "reflector"])
def test_good_ice_servers_load(tmp_path: Path, section: str, server: str) -> None:
    s = load_settings(write(tmp_path, f"[{section}]\nice_servers = [{server}]\n"))
    (ice,) = getattr(s, section).ice_servers
    assert ice.urls.split(":")[0] in ("stun", "turn", "turns")


@pytest.mark.parametrize(("server", "key", "reason"), [
    ('{ urls = "stun.example.org" }', "urls", "must start with stun:, turn: or turns:"),
    ('{ urls = "http://stun.example.org" }', "urls", "must start with stun:"),
    ('{ urls = "stun://stun.example.org" }', "urls", "without //"),
    ('{ urls = "stuns:stun.example.org" }', "urls", "stuns: is not supported"),
    ('{ urls = "stun:" }', "urls", "give a host name"),
    ('{ urls = "stun:stun example.org" }', "urls", "give a host name"),
    ('{ urls = "stun:[2001:db8::1]:3478" }', "urls", "IPv6"),
    ('{ urls = "stun:stun.example.org:port" }', "urls", "port must be 1-65535"),
    ('{ urls = "stun:stun.example.org:70000" }', "urls", "port must be 1-65535"),
    ('{ urls = "stun:stun.example.org?transport=udp" }', "urls", "takes no ?transport="),
    ('{ urls = "turn:t.example.org?transport=sctp", username = "u", credential = "p" }',
     "urls", "?transport=udp or tcp"),
    ('{ urls = "turns:t.example.org?transport=udp", username = "u", credential = "p" }',
     "urls", "?transport=tcp"),
    ('{ urls = "turn:t.example.org" }', "username", "needs one"),
    ('{ urls = "turn:t.example.org", username = "u" }', "credential", "needs one"),
])
def test_bad_ice_server_names_file_line_key_and_reason(
        tmp_path: Path, server: str, key: str, reason: str) -> None:
    path, msg = settings_error(tmp_path, f"[probe]\nwarmup_s = 0.5\nice_servers = [{server}]\n")
    assert msg.startswith(f"{path}: line 3: probe.ice_servers[0].{key}: ")
    assert reason in msg


def test_more_than_one_stun_server_is_refused(tmp_path: Path) -> None:
    # aioice uses the first STUN and the first TURN server and silently ignores the others.
    path, msg = settings_error(tmp_path, '[reflector]\nice_servers = [{ urls = "stun:a" }, '
                                         '{ urls = "stun:b" }]\n')
    assert f"{path}: line 2: reflector.ice_servers: " in msg and "at most one" in msg


def test_every_ice_url_the_loader_accepts_aiortc_parses() -> None:
    from aiortc.rtcicetransport import parse_stun_turn_uri

    for server in GOOD_ICE:
        url = server.split('"')[1]
        assert ice_url_problem(url) is None
        parse_stun_turn_uri(url)  # raises ValueError if aiortc disagrees


# ------------------------------------------------------------------------ command-line overrides


def test_override_checks_a_flag_like_a_file_key() -> None:
    probe = ProbeSettings()
    assert override(probe, "--max-duration", max_duration_s=5.0).max_duration_s == 5.0
    for bad in (1.0, float("nan"), float("inf"), -3.0):
        with pytest.raises(ConfigError, match="^--max-duration: "):
            override(probe, "--max-duration", max_duration_s=bad)
    with pytest.raises(ConfigError, match="^--host: give an address"):
        override(ReflectorSettings(), "--host", host="")
