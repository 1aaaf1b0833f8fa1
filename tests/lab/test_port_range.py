"""The reflector's media ports as a firewall and a NAT see them (issue 8, part 4), in the link
lab with real `netprobe serve` and `netprobe check` processes in two network namespaces:

- **confined ports**: aioice binds each session to an ephemeral UDP port and has no range
  option; the kernel's ``net.ipv4.ip_local_port_range`` is per network namespace, so setting
  it in the reflector's namespace (as ``--sysctl`` does for a container) confines every media
  port: a real check says ``video``, and every port in the answers' candidates and every UDP
  socket in the namespace is in the range;
- **1:1 NAT** (``[reflector] public_address``): the server namespace DNATs a public address
  to the reflector's own and SNATs its packets back (nftables); the client namespace drops
  everything to the reflector's own address and, like a home router, lets in only answers to
  what it sent (else the reflector's own checks, SNATed, would open the way as peer-reflexive
  candidates). A real check says ``video`` with the rewriting, and ``unknown`` (no media
  connection) without it: the control proves the advertised candidates are what connected.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netprobe.lab import LinkLab, check_lab_available, load_profiles
from netprobe.lab.accuracy import NETPROBE, start_reflector

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

_REASON = check_lab_available()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

PORT = 8765
TESTS = str(Path(__file__).resolve().parents[1])
LOW, HIGH = 40100, 40115
PUBLIC = "203.0.113.10"
"""The NAT's public address (TEST-NET-3, RFC 5737: routes nowhere outside the lab)."""
_CANDIDATE_RE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.M)

# Signalling only, from the client namespace: post one offer, print the answer's SDP.
_OFFER_SCRIPT = """
import asyncio, json, sys
import aiohttp
from offers import offer_sdp
async def main():
    body = {"sdp": await offer_sdp(), "type": "offer", "mode": "check"}
    async with aiohttp.ClientSession() as http:
        async with http.post(sys.argv[1] + "/v1/offer", json=body) as resp:
            print(json.dumps(await resp.json()))
asyncio.run(main())
"""


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


async def _check(lab: LinkLab, url: str, timeout: float = 60.0) -> dict[str, object]:
    client = await lab.exec_client(*NETPROBE, "check", "--server", url, "--json",
                                   stdout=asyncio.subprocess.PIPE,
                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(client.communicate(), timeout)
    try:
        result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    result["_stderr"] = err.decode(errors="replace")[-2000:]
    return result


async def _answer(lab: LinkLab, url: str) -> str:
    proc = await lab.exec_client(
        sys.executable, "-c", _OFFER_SCRIPT, url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": os.pathsep.join([TESTS, lab.env()["PYTHONPATH"]])})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode(errors="replace")
    answer = json.loads(out)
    assert "sdp" in answer, answer
    return str(answer["sdp"])


async def test_media_ports_stay_in_the_namespaces_port_range() -> None:
    async with LinkLab(load_profiles()["clean"]) as lab:
        sysctl = "/proc/sys/net/ipv4/ip_local_port_range"
        _run(lab.argv("server", ["sh", "-c", f"echo '{LOW} {HIGH}' > {sysctl}"]))
        assert _run(lab.argv("server", ["cat", sysctl])).split() == [str(LOW), str(HIGH)]
        assert _run(lab.argv("client", ["cat", sysctl])).split() != [str(LOW), str(HIGH)]
        await start_reflector(lab, PORT)
        url = f"http://{lab.server_addr}:{PORT}"

        result = await _check(lab, url)
        assert result.get("verdict") == "video", result

        for _ in range(2):  # two sessions alive at once (each holds its socket ~10 s)
            sdp = await _answer(lab, url)
            candidates = _CANDIDATE_RE.findall(sdp)
            assert candidates, sdp
            for address, port, _kind in candidates:
                assert LOW <= int(port) <= HIGH, (address, port)
            assert any(kind == "host" and addr == lab.server_addr
                       for addr, _, kind in candidates), candidates
        sockets = _run(lab.argv("server", ["ss", "-H", "-u", "-a", "-n"]))
        ports = [int(line.split()[3].rpartition(":")[2]) for line in sockets.splitlines()
                 if line.strip()]
        assert len(ports) >= 2, sockets
        assert all(LOW <= p <= HIGH for p in ports), sockets


def _need_nft() -> None:
    if shutil.which("nft") is None:
        msg = "nft (Debian package nftables) is not installed"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)


def _one_to_one_nat(lab: LinkLab) -> None:
    """`PUBLIC` is the reflector's address from the client's side, and the only one."""
    server_rules = f"""
table ip netprobe_nat {{
    chain pre {{ type nat hook prerouting priority -100; ip daddr {PUBLIC}
                 dnat to {lab.server_addr}; }}
    chain post {{ type nat hook postrouting priority 100; ip saddr {lab.server_addr}
                  snat to {PUBLIC}; }}
}}
"""
    # The client's side behaves as a home router does: nothing comes in that does not answer
    # what went out (so the reflector's own checks cannot open the way), and the reflector's
    # private address is unreachable.
    client_rules = f"""
table ip netprobe_block {{
    chain out {{ type filter hook output priority 0; ip daddr {lab.server_addr} drop; }}
    chain in {{ type filter hook input priority 0; ct state established,related accept;
                iifname "lab0" drop; }}
}}
"""
    for side, rules in (("server", server_rules), ("client", client_rules)):
        proc = subprocess.run(lab.argv(side, ["nft", "-f", "-"]), input=rules, text=True,
                              capture_output=True, timeout=30, check=False)
        assert proc.returncode == 0, f"nft in the {side} namespace: {proc.stderr}"
    _run(lab.argv("client", ["ip", "route", "add", f"{PUBLIC}/32", "dev", "lab0"]))


@pytest.mark.parametrize("advertise", [True, False], ids=["public_address", "without"])
async def test_check_through_a_one_to_one_nat(tmp_path: Path, advertise: bool) -> None:
    _need_nft()
    config = tmp_path / "reflector.toml"
    config.write_text(f'[reflector]\npublic_address = "{PUBLIC}"\n' if advertise else "")
    async with LinkLab(load_profiles()["clean"]) as lab:
        _one_to_one_nat(lab)
        await start_reflector(lab, PORT, args=("--open", "--config", str(config)))
        url = f"http://{PUBLIC}:{PORT}"
        sdp = await _answer(lab, url)  # signalling reaches it through the NAT either way
        hosts = {addr for addr, _, kind in _CANDIDATE_RE.findall(sdp) if kind == "host"}
        assert hosts == ({PUBLIC} if advertise else {lab.server_addr}), sdp
        result = await _check(lab, url)
        if advertise:
            assert result.get("verdict") == "video", result
        else:  # the reflector's own address is unreachable: the media never connects
            assert result.get("verdict") == "unknown", result
