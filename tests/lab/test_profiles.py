"""The profiles file: the starter set loads and agrees with itself; bad input is explained."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import netprobe.lab
from netprobe.errors import ConfigError
from netprobe.lab import describe_profiles, load_profile, load_profiles
from netprobe.lab.profiles import TRACES_ENV, VERDICTS, TraceUnavailable

#: The project root from this file's place in it (not from where netprobe is installed).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTER = PROJECT_ROOT / "config" / "lab-profiles.toml"
TRACE_PROFILES = {"verizon-lte", "tmobile-umts", "att-lte"}
REQUIRED = {
    "clean", "dsl", "cable-bufferbloat", "slow-symmetric", "starved-uplink", "starved-downlink",
    "loss-3", "loss-8", "loss-30", "wifi-bursty", "heavy-jitter", "satellite", "extreme-rtt",
    "gprs", "dead", "verizon-lte", "tmobile-umts", "att-lte", "degrade-midrun",
}  # fmt: skip
#: Token-bucket profiles (issue 10): direction policed or shaped, kind, sustained, bucket, verdict.
BUCKET_PROFILES = {
    "policer-up-50k": ("up", "policer", 400, 50_000, "audio_only"),
    "policer-up-200k": ("up", "policer", 400, 200_000, "audio_only"),
    "policer-up-100k": ("up", "policer", 400, 100_000, "audio_only"),
    "policer-down-200k": ("down", "policer", 400, 200_000, "audio_only"),
    "policer-down-50k": ("down", "policer", 400, 50_000, "audio_only"),
    "shaper-up": ("up", "shaper", 400, 250_000, "audio_only"),
    "shaper-down": ("down", "shaper", 300, 150_000, "audio_only"),
    "policer-2m": ("both", "policer", 2000, 50_000, "video"),
    "mobile-quota": ("both", "shaper", 128, 30_000, "audio_only"),
}


@pytest.fixture(scope="module")
def profiles(traces_dir: Path) -> dict[str, netprobe.lab.Profile]:
    loaded = load_profiles(STARTER)
    assert not loaded.unavailable, loaded.unavailable  # the traces fixture found them
    return dict(loaded)


def test_starter_set_is_complete(profiles: dict[str, netprobe.lab.Profile]) -> None:
    assert REQUIRED <= set(profiles)
    for profile in profiles.values():
        assert profile.description
        assert profile.expect is not None
        assert profile.expect.verdicts and set(profile.expect.verdicts) <= set(VERDICTS)


def test_expectations_match_the_links(profiles: dict[str, netprobe.lab.Profile]) -> None:
    for name, profile in profiles.items():
        expect = profile.expect
        assert expect is not None
        up, down = profile.up, profile.down
        if expect.rtt_ms is not None:
            assert expect.rtt_ms == pytest.approx(up.delay_ms + down.delay_ms), name
        for link, loss, rate in (
            (up, expect.loss_up_pct, expect.rate_up_kbps),
            (down, expect.loss_down_pct, expect.rate_down_kbps),
        ):
            true_loss = link.loss_pct
            if link.gilbert is not None:
                true_loss = 100 * link.gilbert.mean_loss
            assert loss == pytest.approx(true_loss, abs=0.01), name
            # the sustained rate: the bottleneck's, or a policer's or shaper's if lower
            if rate is not None:
                assert rate == pytest.approx(link.sustained_kbps, rel=0.01), name


def test_degrade_midrun_phases(profiles: dict[str, netprobe.lab.Profile]) -> None:
    profile = profiles["degrade-midrun"]
    clean = profiles["clean"]
    assert profile.links_at(0) == (clean.up, clean.down)
    up, down = profile.links_at(30)
    assert up.rate_kbps == down.rate_kbps == 200 and up.loss_pct == down.loss_pct == 8
    assert profile.links_at(60) == (clean.up, clean.down)


def test_udp_blocking_and_connect_breaking_profiles(
    profiles: dict[str, netprobe.lab.Profile]
) -> None:
    for name in ("udp-blocked", "udp-blocked-relay", "udp-blocked-relay-slow-up"):
        profile = profiles[name]
        assert profile.up.block_udp and profile.down.block_udp, name
        assert profile.relay == (name != "udp-blocked"), name
        assert profile.expect is not None and "udp_blocked" in profile.expect.reasons, name
    assert profiles["udp-blocked"].expect.verdicts == ("unknown",)  # type: ignore[union-attr]
    for name, verdict in (("udp-blocked-relay", "video"),
                          ("udp-blocked-relay-slow-up", "audio_only")):
        expect = profiles[name].expect
        assert expect is not None and expect.verdicts == (verdict,)
        assert expect.path == "relay_tcp", name
    slow = profiles["udp-blocked-relay-slow-up"].up.rate_kbps
    assert slow is not None and 250 <= slow <= 300
    for pct in (35, 40, 45):
        profile = profiles[f"connect-loss-{pct}"]
        assert profile.up.loss_pct == profile.down.loss_pct == pct
        assert not profile.up.block_udp and not profile.relay
        # no fixed seed: each run draws its own losses (the figure is 10 runs out of 10)
        assert profile.up.seed is None and profile.down.seed is None
        assert profile.expect is not None and profile.expect.verdicts == ("phone",)
    assert not profiles["clean"].relay and not profiles["clean"].up.block_udp


def test_token_bucket_profiles(profiles: dict[str, netprobe.lab.Profile]) -> None:
    video_min_kbps = 600  # the rule at the top of the profiles file (Zoom 1:1)
    for name, (direction, kind, sustained, burst, verdict) in BUCKET_PROFILES.items():
        profile = profiles[name]
        assert profile.expect is not None and profile.expect.verdicts == (verdict,), name
        assert 20 <= (profile.expect.rtt_ms or 0) <= 60, name
        for side in ("up", "down"):
            link = getattr(profile, side)
            bucket = getattr(link, kind)
            if direction in (side, "both"):
                assert bucket is not None and bucket.rate_kbps == sustained, name
                assert bucket.burst_bytes == burst, name
                # a line much faster than the bucket: the burst is what fools a short test
                assert link.rate_kbps is not None and link.rate_kbps >= 10_000, name
            else:
                assert link.policer is None and link.shaper is None, name
        # labelled from the sustained rate, never from the line rate
        slowest = min(link.sustained_kbps or math.inf for link in (profile.up, profile.down))
        assert (slowest >= video_min_kbps) == (verdict == "video"), name
    # both directions policed with several buckets, a shaper each way
    kinds = {(d, k) for d, k, *_ in BUCKET_PROFILES.values()}
    assert {("up", "policer"), ("down", "policer"), ("up", "shaper"), ("down", "shaper")} <= kinds
    up_policed = [b for d, k, _, b, _ in BUCKET_PROFILES.values() if (d, k) == ("up", "policer")]
    assert len(set(up_policed)) >= 3


def test_trace_profiles_replay_the_shared_traces(
    profiles: dict[str, netprobe.lab.Profile], traces_dir: Path
) -> None:
    for name in TRACE_PROFILES:
        up = profiles[name].up
        assert up.trace is not None and up.trace_name is not None
        assert up.trace == tuple(
            int(line) for line in (traces_dir / Path(up.trace_name).name).read_text().split()
        ), name


def test_describe_reads_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[profiles.x]\ndescription = "X"\nup = { trace = "nowhere.up" }\ndown = {}\n')
    assert describe_profiles(path) == [("x", "X")]
    with pytest.raises(TraceUnavailable,
                       match=r"\[profiles.x\].up.trace: trace file 'nowhere.up' not .*"
                             + TRACES_ENV):
        load_profile("x", path)


def test_a_missing_trace_fails_only_the_profiles_that_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The starter file where neither ../shared/traces nor $NETPROBE_TRACES holds the traces:
    # a fresh clone without shared/ beside it.
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "lab-profiles.toml"
    path.write_text(STARTER.read_text())
    monkeypatch.setenv(TRACES_ENV, str(tmp_path / "no-traces-here"))
    monkeypatch.setattr("netprobe.lab.profiles.PROJECT_ROOT", tmp_path)
    loaded = load_profiles(path)
    assert set(loaded.unavailable) == TRACE_PROFILES
    assert list(loaded) == [name for name, _ in describe_profiles(path)]  # all, in file order
    assert set(loaded.available()) == set(loaded) - TRACE_PROFILES
    assert loaded["clean"].up.trace is None and loaded["dsl"].expect is not None
    with pytest.raises(TraceUnavailable, match=r"\[profiles.verizon-lte\].up.trace: trace file "
                       r"'../shared/traces/Verizon-LTE-short.up' not found .*no-traces-here"):
        loaded["verizon-lte"]  # noqa: B018
    assert issubclass(TraceUnavailable, ConfigError)  # a NetprobeError: no traceback in the CLI
    assert load_profile("clean", path) == loaded["clean"]


def test_netprobe_traces_names_the_traces_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = tmp_path / "elsewhere"
    traces.mkdir()
    (traces / "X.up").write_text("1\n\n3\n7\n")
    path = tmp_path / "p.toml"
    path.write_text('[profiles.t]\nup = { trace = "../shared/traces/X.up" }\ndown = {}\n')
    monkeypatch.setenv(TRACES_ENV, str(tmp_path / "empty"))
    with pytest.raises(TraceUnavailable, match="X.up"):
        load_profile("t", path)
    monkeypatch.setenv(TRACES_ENV, str(traces))
    profile = load_profile("t", path)
    assert profile.up.trace == (1, 3, 7)
    assert profile.up.trace_name == "../shared/traces/X.up"
    assert load_profiles(path)["t"] == profile


def test_a_malformed_trace_is_an_error_in_the_data_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.up").write_text("1\nten\n")
    path = tmp_path / "p.toml"
    path.write_text(f'[profiles.t]\nup = {{ trace = "{tmp_path / "bad.up"}" }}\ndown = {{}}\n')
    with pytest.raises(ConfigError, match=r"bad.up:2: expected a whole number") as info:
        load_profiles(path)
    assert not isinstance(info.value, TraceUnavailable)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("up = { dealy_ms = 5 }\ndown = {}", r"\[profiles.p\].up: unknown key 'dealy_ms'"),
        ('up = { delay_ms = "5" }\ndown = {}', r"\[profiles.p\].up.delay_ms: expected a number"),
        ("up = { loss_pct = 120 }\ndown = {}", r"\[profiles.p\].up: loss_pct must be in"),
        ("up = {}", r"\[profiles.p\]: missing \[down\]"),
        ("up = {}\ndown = { queue_packets = 2.5 }", r"down.queue_packets: expected a whole"),
        (
            "up = {}\ndown = { gilbert = { p_good_to_bad = 2, p_bad_to_good = 0.5 } }",
            r"down.gilbert: p_good_to_bad must be a probability",
        ),
        ("up = {}\ndown = { outages = [[3, 1]] }", r"down: an outage is"),
        ('links_from = "nope"', r"links_from: 'nope' must name a profile"),
        ("up = {}\ndown = {}\n[profiles.p.expect]\nverdicts = ['great']", r"expect.verdicts"),
        ("up = { block_udp = 1 }\ndown = {}", r"up.block_udp: expected true or false"),
        ("up = { policer = 400 }\ndown = {}", r"up.policer: expected a table \{ rate_kbps"),
        ("up = { policer = { rate_kbps = 400 } }\ndown = {}",
         r"up.policer: needs rate_kbps and burst_bytes \(missing burst_bytes\)"),
        ("up = {}\ndown = { shaper = { rate_kbps = 400, burst_bytes = 100, x = 1 } }",
         r"down.shaper: unknown key 'x'"),
        ("up = {}\ndown = { shaper = { rate_kbps = 400, burst_bytes = 100 } }",
         r"down.shaper: burst_bytes must be a whole number >= 1500"),
        ("up = { shaper = { rate_kbps = -1, burst_bytes = 2000 } }\ndown = {}",
         r"up.shaper: rate_kbps must be a finite number > 0"),
        ("up = { policer = { rate_kbps = 400, burst_bytes = 2e5 } }\ndown = {}",
         r"up.policer.burst_bytes: expected a whole number, got 200000.0"),
        ("up = { policer = { rate_kbps = '4', burst_bytes = 2000 } }\ndown = {}",
         r"up.policer.rate_kbps: expected a number"),
        ("up = { policer = { rate_kbps = 4, burst_bytes = 2000 }, shaper = "
         "{ rate_kbps = 4, burst_bytes = 2000 } }\ndown = {}",
         r"\[profiles.p\].up: a shaper cannot be combined with a policer"),
        ('relay = "yes"\nup = {}\ndown = {}', r"\[profiles.p\].relay: expected true or false"),
        (
            "up = {}\ndown = {}\n[profiles.p.expect]\nverdicts = ['video']\nreasons = 'x'",
            r"expect.reasons: expected a list of reason codes",
        ),
        (
            "up = {}\ndown = {}\n[profiles.p.expect]\nverdicts = ['video']\npath = 'relay'",
            r"expect.path: expected one of \['direct', 'relay_udp'",
        ),
        (
            "up = {}\ndown = {}\n[[profiles.p.phases]]\nat_s = 5\nup = {}",
            r"phases\[0\]: missing \[down\]",
        ),
    ],
)
def test_bad_profiles_are_explained(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[profiles.p]\n{body}\n")
    with pytest.raises(ConfigError, match=match) as info:
        load_profiles(path)
    assert str(path) in str(info.value)


def test_unknown_profile_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[profiles.a]\nup = {}\ndown = {}\n")
    with pytest.raises(ConfigError, match="no profile named 'b' .known: a."):
        load_profile("b", path)
    path.write_text("[profiles.a\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profiles(path)
    with pytest.raises(ConfigError, match="no such profiles file"):
        load_profiles(tmp_path / "missing.toml")


def test_exported_members() -> None:
    assert set(netprobe.lab.__all__) == {
        name for name in dir(netprobe.lab) if not name.startswith("_")
    } - {"cli", "errors", "forwarder", "link", "linklab", "netns", "profiles", "udpmeter",
         "accuracy", "coturn", "certs", "bucket"}


def test_every_link_key_in_the_starter_set_reaches_the_link_config(
        profiles: dict[str, netprobe.lab.Profile]) -> None:
    """A key the loader accepts but drops (jitter_hold_ms once was) would silently change
    what a profile emulates."""
    import tomllib

    from netprobe.lab.profiles import default_profiles_path

    table = tomllib.loads(default_profiles_path().read_text())["profiles"]
    for name, raw in table.items():
        for side in ("up", "down"):
            for key, value in raw.get(side, {}).items():
                if key in ("gilbert", "trace", "outages"):
                    continue
                got = getattr(getattr(profiles[name], side), key)
                if key in ("policer", "shaper"):
                    got = dataclasses.asdict(got)
                assert got == value, f"{name}.{side}.{key}: {got!r} != {value!r}"
