"""Signal set-up shared by every long-running command (`check`, `serve`, `agent`, `lab`):
SIGINT and SIGTERM take the same shutdown path; SIGHUP reloads where there is one. Works where
the event loop has no signal handlers (Windows) by falling back to `signal.signal`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call `callback` in `loop` on SIGINT or SIGTERM."""
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            with contextlib.suppress(ValueError):  # not the main thread: nothing to install
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(callback))


def on_reload_signal(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> bool:
    """Call `callback` on SIGHUP where the platform has it; False where it does not."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is None:
        return False
    try:
        loop.add_signal_handler(hup, callback)
    except (NotImplementedError, RuntimeError):
        return False
    return True


def remove_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Undo `on_stop_signals` (the default handlers again)."""
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)
