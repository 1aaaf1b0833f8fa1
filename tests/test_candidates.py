"""netprobe.webrtc.candidates: the host candidates of real aiortc answers moved to a 1:1 NAT's
public address (ports kept, other lines untouched), the `public_address` setting's rule, and
a real reflector whose answers advertise it. (The end-to-end proof through a real NAT is in
tests/lab/test_port_range.py.)"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from offers import offer_sdp
from procs import CHILD_ENV, NETPROBE, free_port, serve, stop

from netprobe.config import ReflectorSettings, load_settings
from netprobe.errors import ConfigError
from netprobe.webrtc.candidates import parse_public_address, rewrite_host_candidates
from netprobe.webrtc.engine import create_peer_connection
from netprobe.webrtc.reflector import Reflector

_CANDIDATE_RE = re.compile(r"^a=candidate:(\S+) (\d+) (\w+) (\d+) (\S+) (\d+) typ (\w+)(.*)$")


async def real_answer() -> str:
    """An aiortc answer to netprobe's offer, as the reflector makes it (all interfaces)."""
    pc: RTCPeerConnection = create_peer_connection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(await offer_sdp(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def candidates(sdp: str) -> list[tuple[str, ...]]:
    return [m.groups() for line in sdp.splitlines() if (m := _CANDIDATE_RE.match(line))]


@pytest.fixture
async def answer() -> str:
    sdp = await real_answer()
    assert any(c[6] == "host" and ":" not in c[4] for c in candidates(sdp)), \
        f"this machine's answer has no IPv4 host candidate: {sdp}"
    return sdp


async def test_ipv4_host_candidates_name_the_public_address_ports_kept(answer: str) -> None:
    out = rewrite_host_candidates(answer, "203.0.113.7")
    before, after = candidates(answer), candidates(out)
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if ":" in old[4]:  # IPv6 host candidate: another family, left alone
            assert new == old
        else:
            assert new[4] == "203.0.113.7"
            assert new[:4] + new[5:] == old[:4] + old[5:]  # port, priority, type... kept
    # c= lines named an IPv4 host address: now the public one; nothing else changed
    assert re.findall(r"^c=.*?$", out.replace("\r", ""), re.M) == ["c=IN IP4 203.0.113.7"] * 2
    changed = [(a, b) for a, b in zip(answer.splitlines(), out.splitlines(), strict=True)
               if a != b]
    assert changed and all(a.startswith(("a=candidate:", "c=")) for a, _ in changed)
    assert out.count("\r\n") == answer.count("\r\n")
    # aiortc reads it back: the same media, candidates at the public address
    parsed = SessionDescription.parse(out)
    for media in parsed.media:
        assert media.host == "203.0.113.7"
        assert {c.ip for c in media.ice_candidates if c.type == "host"} >= {"203.0.113.7"}


async def test_ipv6_public_address_rewrites_ipv6_hosts_only(answer: str) -> None:
    out = rewrite_host_candidates(answer, "2001:db8::7")
    for old, new in zip(candidates(answer), candidates(out), strict=True):
        assert new[4] == ("2001:db8::7" if ":" in old[4] else old[4])
    c_lines = re.findall(r"^c=.*$", answer, re.M)
    assert re.findall(r"^c=.*$", out, re.M) == c_lines  # they name an IPv4 address


async def test_other_candidate_types_and_non_ip_hosts_are_left_alone(answer: str) -> None:
    extra = ("a=candidate:aa 1 udp 1694498815 198.51.100.9 40001 typ srflx raddr 10.0.0.5 "
             "rport 40001\r\n"
             "a=candidate:bb 1 udp 16777215 198.51.100.20 3478 typ relay raddr 198.51.100.9 "
             "rport 40001\r\n"
             "a=candidate:cc 1 udp 2130706431 4f1c2d1e-6f52-4d2b.local 40002 typ host\r\n"
             "a=candidate:dd 1 udp 2130706431 0.0.0.0 9 typ host\r\n")
    sdp = answer.replace("a=end-of-candidates\r\n", extra + "a=end-of-candidates\r\n", 1)
    assert extra in sdp
    out = rewrite_host_candidates(sdp, "203.0.113.7")
    assert extra in out
    assert "a=rtcp:9 IN IP4 0.0.0.0" in out  # the placeholder is no address to rewrite


def test_lf_only_sdp_and_no_host_candidate() -> None:
    sdp = "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 96\nc=IN IP4 192.0.2.2\n"
    assert rewrite_host_candidates(sdp, "203.0.113.7") == sdp  # no candidate named it
    sdp += "a=candidate:x 1 udp 1 192.0.2.2 5000 typ host generation 0\n"
    assert rewrite_host_candidates(sdp, "203.0.113.7") == (
        "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 96\nc=IN IP4 203.0.113.7\n"
        "a=candidate:x 1 udp 1 203.0.113.7 5000 typ host generation 0\n")


@pytest.mark.parametrize("text", ["reflector.example.org", "0.0.0.0", "::", "224.0.0.1",
                                  "203.0.113.7:8765", "", "203.0.113.256"])
def test_public_address_must_be_an_ip_literal(text: str) -> None:
    with pytest.raises(ValueError):
        parse_public_address(text)
    with pytest.raises(ValueError):
        rewrite_host_candidates("v=0\r\n", text)


def test_the_setting_is_checked_when_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "netprobe.toml"
    path.write_text('[reflector]\npublic_address = "reflector.example.org"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "public_address" in str(err.value) and "host name" in str(err.value)
    path.write_text('[reflector]\npublic_address = "2001:db8::7"\n')
    assert load_settings(path).reflector.public_address == "2001:db8::7"
    assert ReflectorSettings().public_address == ""


async def test_a_reflector_with_public_address_advertises_it() -> None:
    for public in ("198.51.100.7", ""):
        r = Reflector(ReflectorSettings(host="127.0.0.1", port=0, public_address=public))
        await r.start()
        try:
            body = {"sdp": await offer_sdp(), "type": "offer", "mode": "check"}
            async with aiohttp.ClientSession() as http:
                async with http.post(r.url + "/v1/offer", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    answer = await resp.json()
        finally:
            await r.stop()
        hosts = {c[4] for c in candidates(answer["sdp"]) if c[6] == "host" and ":" not in c[4]}
        if public:
            assert hosts == {public}, answer["sdp"]
        else:  # the machine's own addresses
            assert hosts and "198.51.100.7" not in hosts, answer["sdp"]


async def test_serve_public_address_flag_reaches_the_answers() -> None:
    port = free_port()
    proc = await serve(port, "--workers", "1", "--public-address", "198.51.100.8")
    try:
        body = {"sdp": await offer_sdp(), "type": "offer", "mode": "check"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/offer", json=body) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
    finally:
        await stop(proc)
    assert {c[4] for c in candidates(answer["sdp"]) if c[6] == "host"} == {"198.51.100.8"}


async def test_serve_refuses_a_host_name_as_public_address() -> None:
    proc = await asyncio.create_subprocess_exec(
        *NETPROBE, "serve", "--port", str(free_port()), "--public-address", "nat.example.org",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"--public-address" in err and b"Traceback" not in err
