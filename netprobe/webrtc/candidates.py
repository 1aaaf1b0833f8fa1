"""Advertising a reflector's public address: rewriting the host candidates of an answer's SDP.

A reflector behind a 1:1 NAT (a cloud VM with a private address and a public "elastic" one)
listens on its private address, and aioice puts that address in its host candidates, which
no client on the internet can reach. With ``[reflector] public_address`` the answer the client
gets names the public address instead, ports kept: the NAT maps ``public:port`` to
``private:port`` one to one, so the client's packets reach the sockets aioice bound.

Pure: SDP text in, SDP text out (no sockets, no clock). What is rewritten (RFC 8839 §5.1,
RFC 8866 §5.7):

- ``a=candidate:... <address> <port> typ host ...`` lines whose address is of the public
  address's family (IPv4 or IPv6): the address becomes the public one;
- ``c=IN IP4|IP6 <address>`` lines naming one of the rewritten addresses (the default
  candidate of the media section): the address (and, if need be, the family) is rewritten.

Left alone: other candidate types (``srflx``, ``relay``, ``prflx``: they already name the
address the world sees, and their ``raddr`` is informative only), host candidates of the
other family, addresses that are not IP literals (mDNS ``.local`` names), ``0.0.0.0``
placeholders, and every other line. Line endings (CRLF or LF) are kept.
"""

from __future__ import annotations

import ipaddress

__all__ = ["parse_public_address", "rewrite_host_candidates"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_public_address(text: str) -> IPAddress:
    """The IPv4 or IPv6 literal `text` (``ValueError`` with a plain reason otherwise).

    Host names are refused: the address goes into every answer, and resolving a name there
    would make each offer wait for DNS. Unspecified and multicast addresses are refused too.
    """
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address (a host name will not "
                         f"do: give the address the NAT maps to this machine)") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text!r} cannot be a reflector's address (unspecified or "
                         f"multicast)")
    return address


def rewrite_host_candidates(sdp: str, public_address: str) -> str:
    """`sdp` with its host candidates (and the ``c=`` lines naming them) moved to
    `public_address`, ports kept. `public_address` must pass `parse_public_address`."""
    public = parse_public_address(public_address)
    lines = sdp.splitlines(keepends=True)
    rewritten: set[IPAddress] = set()
    out: list[str] = []
    for line in lines:
        body, ending = _split_ending(line)
        if body.startswith("a=candidate:"):
            new, old = _rewrite_candidate(body, public)
            if old is not None:
                rewritten.add(old)
            out.append(new + ending)
        else:
            out.append(line)
    if not rewritten:
        return "".join(out)
    family = "IP4" if public.version == 4 else "IP6"
    for i, line in enumerate(out):
        body, ending = _split_ending(line)
        fields = body.split(" ")
        if body.startswith("c=") and len(fields) == 3 and fields[0] == "c=IN":
            address = _ip(fields[2])
            if address is not None and address in rewritten:
                out[i] = f"c=IN {family} {public}{ending}"
    return "".join(out)


def _rewrite_candidate(line: str, public: IPAddress) -> tuple[str, IPAddress | None]:
    """(the line, the address it had) if it is a host candidate of `public`'s family, else
    (the line unchanged, None)."""
    # a=candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE [extensions]
    fields = line.split(" ")
    if len(fields) < 8 or fields[6] != "typ" or fields[7] != "host":
        return line, None
    address = _ip(fields[4])
    if address is None or address.version != public.version or address.is_unspecified:
        return line, None
    fields[4] = str(public)
    return " ".join(fields), address


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_ending(line: str) -> tuple[str, str]:
    body = line.rstrip("\r\n")
    return body, line[len(body):]
