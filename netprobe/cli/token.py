"""`netprobe token issue`: sign an access token for a reflector (docs/reflector.md,
"Access tokens"). The token goes to stdout, alone on its line (or as a check link with
`--link SERVER`), so a clinic's scripts can capture it; nothing else is printed there."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from netprobe import exitcodes
from netprobe.config import server_url_problem
from netprobe.errors import ConfigError
from netprobe.tokens import DEFAULT_TTL_S, SCOPES, check_link, issue, load_keys


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``token`` on the top-level CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="issue access tokens for a reflector (clinics)",
        description="Issue signed access tokens (JWT, HS256, with a key id) that a reflector "
                    "with --token-secret-file accepts. The algorithm is in docs/reflector.md, "
                    "so a clinic's booking system can issue them in any language.")
    sub = parser.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    iss = sub.add_parser(
        "issue", help="print a new token",
        description="Print a new token signed with the first key of the secret file. "
                    "Scope `check`: good for one pre-session check (send it as a check link); "
                    "scope `monitor`: for the background agent's monitoring streams and "
                    "checks ([agent] token_file). Exit 0 printed, 2 bad option or "
                    "secret file.")
    iss.add_argument("--secret-file", required=True, type=Path, metavar="PATH",
                     help="the reflector's token secret file (`kid = secret` lines, mode 0600)")
    iss.add_argument("--scope", required=True, choices=SCOPES,
                     help="check (one pre-session check) or monitor (the agent)")
    iss.add_argument("--ttl", type=float, metavar="SECONDS",
                     help=f"lifetime (default {DEFAULT_TTL_S['check']} for check, "
                          f"{DEFAULT_TTL_S['monitor']} for monitor)")
    iss.add_argument("--link", metavar="SERVER_URL",
                     help="print a check link for this reflector URL instead of the bare "
                          "token: SERVER_URL/check#t=TOKEN (for `netprobe check --link`)")
    iss.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.link is not None and (problem := server_url_problem(args.link)) is not None:
        raise ConfigError(f"--link: {problem}")
    token = issue(load_keys(args.secret_file), args.scope, time.time(), args.ttl)
    sys.stdout.write((check_link(args.link, token) if args.link else token) + "\n")
    return exitcodes.OK
