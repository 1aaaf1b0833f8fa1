"""The lab for networks that block UDP (issue 9): the emulator's ``block_udp``, coturn started in
the server namespace with TURN REST credentials, and `netprobe check` over the relay profiles.

Real processes throughout: coturn's ``turnserver`` (Debian package ``coturn``; CI installs
it, and a missing one fails there and skips locally), aioice's TURN client in the client
namespace, `netprobe serve` and `netprobe check`. The last three tests (``-k check_over``)
need the reflector's ``--turn-url``/``--turn-secret-file`` and the client's relay fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from netprobe.lab import LinkLab, check_lab_available, load_profiles
from netprobe.lab.accuracy import check_on_profile, format_row, judge
from netprobe.lab.coturn import TURNSERVER, TurnServer, rest_credentials, start_coturn
from netprobe.lab.linklab import Side

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

_REASON = check_lab_available()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

EXIT = {"video": 0, "audio_only": 10, "phone": 11, "unknown": 12}

# Run in one namespace: a TCP echo ("tcp-serve PORT") or one exchange with it ("tcp-talk HOST
# PORT"); a UDP counter ("udp-count PORT": datagrams until 1.5 s of silence) or 50 datagrams
# to it ("udp-send HOST PORT").
_EXCHANGE_SCRIPT = """
import socket, sys, time
mode = sys.argv[1]
if mode == "tcp-serve":
    srv = socket.create_server(("0.0.0.0", int(sys.argv[2])))
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.sendall(conn.recv(100).upper())
    conn.close()
elif mode == "tcp-talk":
    with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5) as s:
        s.sendall(b"over tcp")
        print(s.recv(100).decode())
elif mode == "udp-count":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.settimeout(1.5)
    print("ready", flush=True)
    count = 0
    try:
        while True:
            s.recv(2000)
            count += 1
    except TimeoutError:
        print(count)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):
        s.sendto(b"x" * 100, (sys.argv[2], int(sys.argv[3])))
        time.sleep(0.002)
"""


# Run in the client namespace: one TURN allocation per way given, with the credentials given;
# prints {"way": "relayed ADDR:PORT" | "error: ..."} as JSON.
_ALLOCATE_SCRIPT = """
import asyncio, json, ssl, sys
from aioice.turn import create_turn_endpoint
host, username, password, ways = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
PORTS = {"udp": (3478, "udp", None), "tcp": (3478, "tcp", None), "tls": (5349, "tcp", True)}
async def allocate(way):
    port, transport, tls = PORTS[way]
    context = ssl.create_default_context() if tls else None
    try:
        turn, _ = await asyncio.wait_for(create_turn_endpoint(
            asyncio.DatagramProtocol, (host, port), username, password, ssl=context,
            transport=transport), 4)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    relayed = turn.get_extra_info("sockname")
    turn.close()
    return f"relayed {relayed[0]}:{relayed[1]}"
async def main():
    print(json.dumps({way: await allocate(way) for way in ways}))
asyncio.run(main())
"""


def _need_turnserver() -> None:
    if shutil.which(TURNSERVER) is None:
        msg = f"{TURNSERVER} (Debian package coturn) is not installed"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)


async def _output(process: asyncio.subprocess.Process, timeout: float = 30) -> str:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, err.decode(errors="replace")
    return out.decode().strip()


async def _allocate(lab: LinkLab, username: str, password: str, *ways: str,
                    env: dict[str, str] | None = None) -> dict[str, str]:
    pipe = asyncio.subprocess.PIPE
    process = await lab.exec_client(sys.executable, "-c", _ALLOCATE_SCRIPT, lab.server_addr,
                                    username, password, *ways, env=env, stdout=pipe,
                                    stderr=pipe)
    result: dict[str, str] = json.loads(await _output(process))
    return result


# -- the emulator blocks UDP and only UDP --------------------------------------------------------


async def _udp_received(lab: LinkLab, receiver: Side, port: int) -> int:
    """Datagrams that arrive of 50 sent to ``receiver`` from the other side."""
    sender: Side = "client" if receiver == "server" else "server"
    to = lab.server_addr if receiver == "server" else lab.client_addr
    pipe = asyncio.subprocess.PIPE
    count = await lab.exec(receiver, sys.executable, "-c", _EXCHANGE_SCRIPT, "udp-count",
                           str(port), stdout=pipe, stderr=pipe)
    assert count.stdout is not None
    assert (await asyncio.wait_for(count.stdout.readline(), 10)).strip() == b"ready"
    send = await lab.exec(sender, sys.executable, "-c", _EXCHANGE_SCRIPT, "udp-send", to,
                          str(port), stdout=pipe, stderr=pipe)
    await _output(send)
    return int(await _output(count))


async def _tcp_reply(lab: LinkLab, port: int) -> str:
    pipe = asyncio.subprocess.PIPE
    echo = await lab.exec_server(sys.executable, "-c", _EXCHANGE_SCRIPT, "tcp-serve",
                                 str(port), stdout=pipe)
    assert echo.stdout is not None
    assert (await asyncio.wait_for(echo.stdout.readline(), 10)).strip() == b"ready"
    talk = await lab.exec_client(sys.executable, "-c", _EXCHANGE_SCRIPT, "tcp-talk",
                                 lab.server_addr, str(port), stdout=pipe, stderr=pipe)
    return await _output(talk)


async def test_block_udp_drops_udp_both_ways_and_lets_tcp_through() -> None:
    async with LinkLab(load_profiles()["udp-blocked"]) as lab:
        up = await _udp_received(lab, "server", 47101)
        down = await _udp_received(lab, "client", 47102)
        reply = await _tcp_reply(lab, 47100)
        stats = lab.stats()
    assert (up, down) == (0, 0)
    assert stats.up.dropped_blocked >= 50 and stats.down.dropped_blocked >= 50
    assert reply == "OVER TCP"
    # TCP went both ways through the link and none of it was blocked or lost
    assert stats.up.delivered > 0 and stats.down.delivered > 0
    assert stats.up.dropped_loss == stats.down.dropped_loss == 0


async def test_the_same_exchange_passes_without_block_udp() -> None:
    # the control: the exchange above counts what arrives (a broken counter would say 0 too)
    async with LinkLab(load_profiles()["clean"]) as lab:
        assert await _udp_received(lab, "server", 47101) == 50
        assert await _udp_received(lab, "client", 47102) == 50
        assert lab.stats().up.dropped_blocked == lab.stats().down.dropped_blocked == 0


# -- coturn in the server namespace ----------------------------------------------------------------


async def test_coturn_allocates_with_rest_credentials_over_tcp_and_tls(tmp_path: Path) -> None:
    _need_turnserver()
    async with LinkLab(load_profiles()["udp-blocked"]) as lab:
        turn = await start_coturn(lab, tmp_path)
        assert turn.urls == (
            f"turn:{lab.server_addr}:3478?transport=udp",
            f"turn:{lab.server_addr}:3478?transport=tcp",
            f"turns:{lab.server_addr}:5349?transport=tcp",
        )
        assert turn.secret_file.read_text().strip() == turn.secret
        assert turn.reflector_args()[-2:] == ["--turn-secret-file", str(turn.secret_file)]
        username, password = rest_credentials(turn.secret, "lab", int(time.time()) + 600)
        got = await _allocate(lab, username, password, "tcp", "tls", "udp",
                              env=turn.client_env())
        _, wrong = rest_credentials("not-the-secret", "lab", int(time.time()) + 600)
        refused = await _allocate(lab, username, wrong, "tcp")
        expired = await _allocate(lab, *rest_credentials(turn.secret, "lab", 1_000_000), "tcp")
        untrusted = await _allocate(lab, username, password, "tls")  # no SSL_CERT_FILE
        log = turn.log_tail(200)
    relayed = f"relayed {turn.address}:"
    assert got["tcp"].startswith(relayed), (got, log)
    assert got["tls"].startswith(relayed), (got, log)
    port = int(got["tcp"].rpartition(":")[2])
    assert 61000 <= port <= 61999  # coturn's relay range, outside the ephemeral ports
    assert got["udp"].startswith("error"), got  # UDP to the TURN server is blocked too
    assert refused["tcp"].startswith("error") and "401" in refused["tcp"], refused
    assert expired["tcp"].startswith("error") and "401" in expired["tcp"], expired
    assert untrusted["tls"].startswith("error"), untrusted
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted["tls"], untrusted


async def test_coturn_answers_over_udp_when_udp_passes(tmp_path: Path) -> None:
    _need_turnserver()
    async with LinkLab(load_profiles()["clean"]) as lab:
        turn = await start_coturn(lab, tmp_path)
        got = await _allocate(lab, *turn.credentials("lab", int(time.time()) + 600), "udp")
    assert got["udp"].startswith(f"relayed {turn.address}:"), got


async def test_missing_turnserver_is_a_clear_lab_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netprobe.lab import LabError

    async with LinkLab(load_profiles()["clean"]) as lab:
        with monkeypatch.context() as patch:  # not around the lab's own `ip` calls
            patch.setenv("PATH", str(tmp_path))
            with pytest.raises(LabError, match="'turnserver' .coturn. is not installed"):
                await start_coturn(lab, tmp_path / "turn")


# -- judging the expectations (pure) ------------------------------------------------------------


def test_judge_checks_reasons_and_path() -> None:
    from netprobe.lab.accuracy import AccuracyRow

    def row(result: dict[str, object]) -> AccuracyRow:
        return AccuracyRow(
            profile="p", expected=("video",), verdict=str(result["verdict"]), wall_s=1.0,
            result=result, true_rtt_ms=None, true_loss=(None, None),
            true_rate=(None, None), trace=False, exit_code=0,
            expected_reasons=("udp_blocked",), expected_path="relay_tcp")

    good = {"verdict": "video", "path": "relay_tcp",
            "reasons": [{"code": "udp_blocked", "text": "..."}]}
    assert judge(row(good)) == []
    assert judge(row({**good, "path": "direct"})) == ["path direct, expected relay_tcp"]
    assert judge(row({**good, "path": None})) == ["path None, expected relay_tcp"]
    assert judge(row({**good, "reasons": []})) == ["reasons [] lack udp_blocked"]
    assert judge(row({**good, "reasons": "garbage"})) == ["reasons [] lack udp_blocked"]
    assert judge(row({**good, "reasons": ["udp_blocked"]})) == []  # plain codes do too


def test_turn_server_description() -> None:
    turn = TurnServer(address="198.18.0.2", urls=("turn:198.18.0.2:3478?transport=tcp",),
                      secret="s", secret_file=Path("/x/secret"), ca_file=Path("/x/ca.pem"),
                      log_file=Path("/x/log"))
    assert turn.reflector_args() == ["--turn-url", "turn:198.18.0.2:3478?transport=tcp",
                                     "--turn-secret-file", "/x/secret"]
    assert turn.client_env() == {"SSL_CERT_FILE": "/x/ca.pem"}
    # TURN REST API (draft-uberti-behave-turn-rest), as coturn checks it: base64 HMAC-SHA1
    assert rest_credentials("north", "alice", 1700000000) == (
        "1700000000:alice", "Cd/49soE35ICqcJF/bCTn8Z4OyE=")  # openssl dgst -sha1 -hmac


# -- `netprobe check` over the relay profiles (need the reflector's and the client's parts) -----


async def test_check_over_relay_on_a_clean_link_is_video_over_turn_tcp() -> None:
    _need_turnserver()
    row = await check_on_profile(load_profiles()["udp-blocked-relay"])
    detail = format_row(row) + "\n" + json.dumps(row.result) + "\n" + row.stderr
    assert row.verdict == "video", detail
    assert row.result.get("path") == "relay_tcp", detail
    connect = row.result.get("connect") or {}
    assert connect.get("local_candidate") == "relay", detail
    assert not [p for p in row.problems if "reasons" in p or "path" in p], detail
    assert row.exit_code == EXIT["video"], detail
    assert "Traceback" not in row.stderr


async def test_check_over_relay_on_a_slow_uplink_is_audio_only() -> None:
    _need_turnserver()
    row = await check_on_profile(load_profiles()["udp-blocked-relay-slow-up"])
    detail = format_row(row) + "\n" + json.dumps(row.result) + "\n" + row.stderr
    assert row.verdict == "audio_only", detail
    assert row.result.get("path") == "relay_tcp", detail
    assert (row.result.get("connect") or {}).get("local_candidate") == "relay", detail
    assert row.exit_code == EXIT["audio_only"], detail
    assert "Traceback" not in row.stderr


async def test_check_over_blocked_udp_without_relay_says_udp_blocked_quickly() -> None:
    row = await check_on_profile(load_profiles()["udp-blocked"])
    detail = format_row(row) + "\n" + json.dumps(row.result) + "\n" + row.stderr
    assert row.verdict == "unknown", detail
    codes = [r.get("code") if isinstance(r, dict) else r for r in row.result.get("reasons", [])]
    assert "udp_blocked" in codes and "connect_timeout" not in codes, detail
    assert row.result.get("path") is None, detail
    assert row.wall_s <= 8.0, detail  # found out well before the 12 s connect timeout
    assert row.exit_code == EXIT["unknown"], detail
    assert "Traceback" not in row.stderr


def test_judge_takes_a_coarse_loss_figure_by_its_interval() -> None:
    from netprobe.lab.accuracy import AccuracyRow

    def row(down: dict[str, object]) -> AccuracyRow:
        result = {"verdict": "audio_only", "metrics": {"up": {}, "down": down}}
        return AccuracyRow(
            profile="p", expected=("audio_only",), verdict="audio_only", wall_s=1.0,
            result=result, true_rtt_ms=None, true_loss=(None, 8.0), true_rate=(None, None),
            trace=False, exit_code=0)

    # stopped early (half-width 4 points): judged by its interval, which holds the truth
    assert judge(row({"loss_pct": 6.1, "loss_interval_pct": [4.0, 12.0]})) == []
    assert judge(row({"loss_pct": 2.0, "loss_interval_pct": [1.0, 7.0]})) == [
        "down loss 2.0 % [1.0, 7.0] misses true 8"]
    # precise (half-width 1 point): judged to 1.5 points as before
    assert judge(row({"loss_pct": 6.1, "loss_interval_pct": [5.1, 7.1]})) == [
        "down loss 6.1 % vs true 8"]
    assert judge(row({"loss_pct": 6.1})) == ["down loss 6.1 % vs true 8"]
