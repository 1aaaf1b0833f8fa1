"""Every exit status netprobe's commands return, in one place (documented in
docs/check-format.md and docs/service.md; tests assert them)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
"""Success (for `check`: the verdict is `video`)."""
FAILED: Final = 1
"""A service command failed (the service manager refused or an unexpected I/O error)."""
USAGE: Final = 2
"""Usage or configuration error: a bad flag, a bad config file (the message names file and key)."""
UNAVAILABLE: Final = 3
"""`lab`: the machine cannot run the link lab (not root, no /dev/net/tun, no `ip`);
`service status`: installed but not running."""
NOT_INSTALLED: Final = 4
"""`service status`: no service is installed."""
AUDIO_ONLY: Final = 10
"""`check`: the verdict is `audio_only`."""
PHONE: Final = 11
"""`check`: the verdict is `phone`."""
UNKNOWN: Final = 12
"""`check`: nothing could be measured (server unreachable, busy, no connection)."""
INTERRUPTED: Final = 130
"""Stopped by Ctrl-C or SIGTERM before it finished (128 + SIGINT, the shell's convention)."""
TERMINATED: Final = 143
"""`lab run`/`lab shell`: stopped by SIGTERM (128 + SIGTERM); after Ctrl-C they return 130."""

BY_VERDICT: Final = {"video": OK, "audio_only": AUDIO_ONLY, "phone": PHONE, "unknown": UNKNOWN}
"""A check's exit status by its verdict."""
