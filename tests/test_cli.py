"""The command line as a user runs it: real processes, exit codes, output formats."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from procs import CHILD_ENV, NETPROBE, free_port

JSON_KEYS = {"schema", "verdict", "confidence", "reasons", "metrics", "duration_s",
             "started_at"}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env=CHILD_ENV)


def test_local_check_json_is_one_object_and_exit_0() -> None:
    proc = run("check", "--local", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert JSON_KEYS <= set(doc)
    assert doc["schema"] == "netprobe.check/1"
    assert doc["verdict"] == "video" and doc["local"] is True
    assert set(doc["metrics"]) >= {"rtt_ms", "mos_audio", "up", "down"}
    for d in ("up", "down"):
        assert set(doc["metrics"][d]) >= {"kbps", "loss_pct", "jitter_ms"}
    assert all(set(r) == {"code", "message"} for r in doc["reasons"])
    assert doc["started_at"].endswith("Z")
    assert "Traceback" not in proc.stderr


def test_local_check_text_leads_with_self_test_and_says_it_was_local() -> None:
    proc = run("--lang", "en", "check", "--local")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == "Self-test passed: netprobe works on this computer."
    assert "ready for a video session" not in proc.stdout  # it did not test the link
    assert "did not test your internet connection" in proc.stdout
    assert "Upload" in proc.stdout and "Download" in proc.stdout


def test_unreachable_server_exit_12_without_traceback() -> None:
    t0 = time.monotonic()
    proc = run("check", "--server", f"http://127.0.0.1:{free_port()}", "--json",
               "--max-duration", "5")
    assert time.monotonic() - t0 < 15
    assert proc.returncode == 12
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "unknown"
    assert doc["reasons"][0]["code"] == "server_unreachable"
    assert "Traceback" not in proc.stderr


def test_unreachable_server_text_is_calm() -> None:
    proc = run("--lang", "en", "check", "--server", f"http://127.0.0.1:{free_port()}",
               "--max-duration", "5")
    assert proc.returncode == 12
    assert proc.stdout.startswith("Your connection could not be tested.")
    assert "run the check again" in proc.stdout  # what to do next
    assert "phone" in proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args", [
    ("check",),
    ("check", "--server", "http://x", "--local"),
    ("check", "--local", "--max-duration", "abc"),
    ("check", "--local", "--max-duration", "0.5"),
    ("serve", "--port", "99999"),
    ("frobnicate",),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# Every flag with a value a user could mistype, and what the message must name. None of these
# may start anything: each is refused before a socket is opened.
BAD_FLAGS = [
    (("check", "--local", "--max-duration", "nan"), "--max-duration"),
    (("check", "--local", "--max-duration", "inf"), "--max-duration"),
    (("check", "--local", "--max-duration", "1e400"), "--max-duration"),
    (("check", "--local", "--max-duration", "-3"), "--max-duration"),
    (("check", "--server", "http://[::1"), "--server"),
    (("check", "--server", "http://reflector.example:99999"), "--server"),
    (("check", "--server", "ftp://reflector.example"), "--server"),
    (("check", "--server", "reflector.example:8765"), "--server"),
    (("check", "--server", ""), "--server"),
    (("check", "--server", "http://ok.example:8765,ftp://x"), "--server"),
    (("check", "--server", "http://ok.example:8765", "--server", "nope"), "--server"),
    (("check", "--server", " , "), "--server"),
    (("serve", "--port", "0"), "--port"),
    (("serve", "--port", "-1"), "--port"),
    (("serve", "--port", "http"), "--port"),
    (("serve", "--host", ""), "--host"),
    (("serve", "--max-sessions", "0"), "--max-sessions"),
    (("serve", "--max-sessions", "many"), "--max-sessions"),
    (("serve", "--session-timeout", "0"), "--session-timeout"),
    (("serve", "--session-timeout", "-5"), "--session-timeout"),
    (("serve", "--session-timeout", "nan"), "--session-timeout"),
    (("serve", "--session-timeout", "inf"), "--session-timeout"),
    (("agent", "--api-port", "70000"), "--api-port"),
    (("agent", "--api-port", "x"), "--api-port"),
    (("agent", "--server", "http://[::1"), "--server"),
    (("agent", "--server", "reflector.example:8765"), "--server"),
    (("agent", "--server", "http://ok.example:8765", "--server", "ok.example"), "--server"),
    (("lab", "run", "--profile", "dsl", "--server-cmd", "'unclosed", "--", "true"),
     "--server-cmd"),
    (("lab", "run", "--profile", "dsl", "--server-wait", "nan", "--", "true"), "--server-wait"),
    (("lab", "run", "--profile", "dsl", "--server-wait", "-1", "--", "true"), "--server-wait"),
    (("lab", "list", "--profiles", "/nonexistent/profiles.toml"), "/nonexistent/profiles.toml"),
    (("service", "install", "--platform", "beos"), "--platform"),
    (("service", "status", "--name", "a/b"), "a/b"),
    (("--config", "/proc/self/mem", "check", "--local"), "/proc/self/mem"),
    (("--thresholds", "/", "check", "--local"), "is a directory"),
]


@pytest.mark.parametrize(("args", "named"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_value_exits_2_with_a_message_naming_it(args: tuple[str, ...],
                                                          named: str) -> None:
    proc = run(*args, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("content", "needle"), [
    ("[probe\nmax_duration_s = 3", "not valid TOML"),
    ("[probe]\nmax_duration_s = 'soon'", "probe.max_duration_s"),
    ("[probe]\nwarp = 9", "unknown setting 'warp'"),
    ("[probe]\nladder_kbps = [800, 300]", "ladder_kbps"),
    ("[reflector]\nport = -1", "reflector.port"),
    ("[agent]\nserver = ['http://ok.example:8765', 'ftp://x']", "agent.server"),
    ("[agent]\nserver = 'http://ok.example:8765, nope'", "agent.server"),
    ("[agent]\nserver = 5", "agent.server"),
    ("[nonsense]\nx = 1", "unknown section"),
])
def test_bad_config_exit_2_names_file_and_key(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(content)
    proc = run("--config", str(cfg), "check", "--local")
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr and needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_several_servers_a_dead_one_first_the_check_says_video_from_the_next() -> None:
    """`--server` repeated and comma-separated: in whatever order they are shuffled, the two
    dead URLs are passed over (fast: nothing listens) and the live reflector answers."""
    port = free_port()
    server = subprocess.Popen([*NETPROBE, "serve", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=CHILD_ENV)
    try:
        assert server.stderr is not None and f":{port}" in server.stderr.readline()
        dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
        proc = run("check", "--server", dead[0], "--server", f"{dead[1]},http://127.0.0.1:{port}",
                   "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["verdict"] == "video" and doc["server"] is None  # no address by default
    finally:
        server.terminate()
        server.communicate(timeout=20)


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    proc = run("--config", str(tmp_path / "absent.toml"), "check", "--local")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_serve_answers_checks_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    server = subprocess.Popen([*NETPROBE, "serve", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert f"127.0.0.1:{port}" in line
        proc = run("check", "--server", f"http://127.0.0.1:{port}", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["verdict"] == "video"
        assert json.loads(proc.stdout)["local"] is False
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "Traceback" not in err and "Task was destroyed" not in err


def test_serve_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run("serve", "--port", str(port), timeout=20)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])
def test_serve_on_an_address_not_ours_is_a_clear_error(host: str) -> None:
    proc = run("serve", "--host", host, "--port", str(free_port()), timeout=30)
    assert proc.returncode == 1
    assert f"cannot listen on {host}:" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_ice_server_in_the_config_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text('[probe]\nice_servers = [{ urls = "stun:/stun.example.org" }]\n')
    proc = run("--config", str(cfg), "check", "--local")
    assert proc.returncode == 2
    assert f"{cfg}: line 2: probe.ice_servers[0].urls:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_a_local_check_ends_it_cleanly(sig: signal.Signals) -> None:
    # -v logs the local reflector's "probe session started": the check is then measuring.
    env = {**CHILD_ENV, "PYTHONWARNINGS": "error::RuntimeWarning,default::ResourceWarning"}
    check = subprocess.Popen([*NETPROBE, "-v", "check", "--local", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert check.stderr is not None
    seen = []
    for line in check.stderr:
        seen.append(line)
        if "probe session started" in line:
            break
    check.send_signal(sig)
    out, err = check.communicate(timeout=20)
    err = "".join(seen) + err
    assert check.returncode == 130, err
    assert out == ""  # no half a result on stdout
    assert "check stopped before it finished" in err
    for trouble in ("Traceback", "Task was destroyed", "ResourceWarning", "Unclosed"):
        assert trouble not in err
