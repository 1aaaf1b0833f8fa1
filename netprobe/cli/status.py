"""`netprobe status`: what the background agent recommends right now, in plain words, for the
client or a support person on the phone with them (docs/agent-api.md, "netprobe status").

It reads the agent's local API (`GET /v1/status` on the loopback address and port of `[agent]`,
or `--api-port`; reading needs no token). Exit status: 0 the agent answered; 3 (`UNAVAILABLE`)
nothing answers there: the agent is not running; 1 (`FAILED`) something answered that is not
the agent's status. `--json` prints the status document itself (`netprobe.status/1`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from netprobe import exitcodes
from netprobe.config import Settings
from netprobe.core.certainty import certainty_of
from netprobe.core.words import phrase_from_json
from netprobe.errors import ConfigError, NetprobeError
from netprobe.i18n import N_, _, n_, text_of

TIMEOUT_S = 5.0
SCHEMA = "netprobe.status/1"


class AgentNotRunning(NetprobeError):
    """Nothing answers on the agent's API address."""


class NotAStatus(NetprobeError):
    """Something answered, but not with the agent's status."""


def add_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="what the background agent recommends now",
                            description="Ask the background agent on this computer what it "
                                        "recommends now and why, in plain words.")
    status.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="settings file (TOML): the agent's [agent] api_port")
    status.add_argument("--thresholds", type=Path, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    status.add_argument("--api-port", type=int, metavar="N",
                        help="the agent's local API port (default: [agent] api_port, 8766)")
    status.add_argument("--json", action="store_true",
                        help="print the agent's status document (schema netprobe.status/1)")
    status.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    port = settings.agent.api_port if args.api_port is None else args.api_port
    if not 0 < port < 65536:
        raise ConfigError("--api-port must be 1-65535")
    host = settings.agent.api_host
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        status = asyncio.run(fetch(f"http://{where}/v1/status"))
    except AgentNotRunning:
        print(_("netprobe: the agent is not running (nothing answers on {where}); start it "
                "with `netprobe agent`, or see `netprobe service status`").format(where=where),
              file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except NotAStatus as exc:
        print(_("netprobe: {where} did not answer as the agent does: {why}").format(
            where=where, why=exc), file=sys.stderr)
        return exitcodes.FAILED
    if args.json:
        sys.stdout.write(json.dumps(status) + "\n")
    else:
        sys.stdout.write(render_status(status, datetime.now().astimezone()))
    return exitcodes.OK


async def fetch(url: str) -> dict[str, Any]:
    """The status document at `url`; AgentNotRunning or NotAStatus."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            if resp.status != 200:
                raise NotAStatus(f"HTTP {resp.status}")
            try:
                doc = json.loads(await resp.text())
            except (ValueError, UnicodeDecodeError):
                raise NotAStatus("not JSON") from None
    except aiohttp.ClientConnectorError:
        raise AgentNotRunning(url) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NotAStatus(type(exc).__name__) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise NotAStatus(f"not a {SCHEMA} document")
    return doc


_HEADLINES = {
    "video": N_("The agent recommends video: your connection can hold a video session now."),
    "audio_only": N_("The agent recommends audio only: video would not hold steadily right "
                     "now."),
    "phone": N_("The agent recommends the phone: your internet connection is not steady "
                "enough for a call right now."),
    "unknown": N_("The agent cannot tell right now how your connection is doing."),
}
_SOURCES = {"api": N_("started by the video app"),
            "detected": N_("a call noticed on this computer")}
_DAYS = {"mon": N_("Monday"), "tue": N_("Tuesday"), "wed": N_("Wednesday"),
         "thu": N_("Thursday"), "fri": N_("Friday"), "sat": N_("Saturday"), "sun": N_("Sunday")}


def _clock(iso: Any, now: datetime) -> str | None:
    """`HH:MM` (local time) of an ISO timestamp from the status; None if there is none."""
    if not isinstance(iso, str):
        return None
    try:
        at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(now.tzinfo)
    except ValueError:
        return None
    return at.strftime("%H:%M") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M")


def _ago(age_s: Any) -> str:
    if not isinstance(age_s, (int, float)) or age_s < 90:
        return _("just now")
    minutes = round(age_s / 60)
    if minutes < 90:
        return n_("{n} minute ago", "{n} minutes ago", minutes).format(n=minutes)
    hours = round(age_s / 3600)
    return n_("{n} hour ago", "{n} hours ago", hours).format(n=hours)


def _reason_text(reason: dict[str, Any]) -> str:
    """A status reason in the current language, from its template when the agent sent one;
    its English message otherwise."""
    phrase = phrase_from_json(reason)
    return _text(reason.get("message")) if phrase is None else text_of(phrase)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def render_status(status: dict[str, Any], now: datetime) -> str:
    """The status for a person: the recommendation, why, the session, when it was last
    checked and, when the status names it, whom to phone."""
    rec = _text(status.get("recommendation")) or "unknown"
    lines = [_(_HEADLINES.get(rec, _HEADLINES["unknown"]))]
    reasons = [r for r in status.get("reasons") or () if isinstance(r, dict)]
    c = certainty_of(rec, status.get("confidence"), [_text(r.get("code")) for r in reasons])
    if c is not None:
        lines.append(_("How sure: {words}.").format(words=_(c.words)))
    shown = [r for r in reasons if r.get("code") != "video_ok" and _text(r.get("message"))]
    if shown:
        lines += ["", _("Why:") if rec != "video" else _("Good to know:")]
        lines += [f"  - {_reason_text(r)}" for r in shown]
    lines.append("")
    if status.get("state") == "monitoring":
        since = _clock(status.get("session_started_at"), now)
        source = _SOURCES.get(_text(status.get("session_source")))
        how = f" ({_(source)})" if source else ""
        lines.append(_("A session is being watched{how}, since {time}.").format(
            how=how, time=since) if since else _("A session is being watched{how}.").format(
            how=how))
    else:
        lines.append(_("No session is being watched; the agent checks now and then."))
    checked = _clock(status.get("updated_at"), now)
    if checked is None:
        lines.append(_("Not checked yet."))
    else:
        lines.append(_("Last checked: {ago} ({time}).").format(
            ago=_ago(status.get("age_s")), time=checked))
    if status.get("check_running"):
        lines.append(_("A check is running now."))
    if status.get("reflector") == "unreachable":
        lines.append(_("The clinic's test server could not be reached last time."))
    fallback = status.get("fallback")
    if isinstance(fallback, dict) and _text(fallback.get("phone")):
        lines += ["", _("If you need to phone:"), f"  {_fallback_line(fallback)}"]
        if _text(fallback.get("message")):
            lines.append(f"  {_text(fallback['message'])}")
    return "\n".join(lines).rstrip() + "\n"


def _fallback_line(fallback: dict[str, Any]) -> str:
    who = _text(fallback.get("name")) or _("your clinic")
    number = _text(fallback.get("phone_national")) or _text(fallback.get("phone"))
    until, opens = _text(fallback.get("open_until")), fallback.get("opens")
    if fallback.get("open_now") is True and until:
        return _("Call {who} on {number} (open now, until {time}).").format(
            who=who, number=number, time=until)
    if fallback.get("open_now") is False and isinstance(opens, dict) \
            and _text(opens.get("day")) in _DAYS:
        return _("Call {who} on {number} (closed now; opens {day} {time}).").format(
            who=who, number=number, day=_(_DAYS[_text(opens.get("day"))]),
            time=_text(opens.get("time")))
    if fallback.get("open_now") is False:
        return _("Call {who} on {number} (closed now).").format(who=who, number=number)
    return _("Call {who} on {number}.").format(who=who, number=number)
