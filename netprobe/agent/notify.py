"""Desktop notices: the agent's calm word to the person in front of the screen when its
recommendation changes during a session (docs/agent-api.md, "Desktop notices").

`DesktopNotices` follows the agent's status events (the same ones `/v1/events` sends), asks
the pure `netprobe.core.notices.Notices` whether to say something, and shows what it decides
through `DesktopSender`, a thin adapter over `desktop-notifier` (Linux: DBus
`org.freedesktop.Notifications`; macOS: the Notification Center, from an app bundle; Windows
10+: WinRT toasts). `[agent] notify = false` keeps it quiet.

A computer with no notification service (a server, a system service with no desktop session,
no session bus, no notification daemon) gets ONE warning (`notify_unavailable`) and the agent
carries on; a send is cut off after `SEND_TIMEOUT_S`. Nothing here raises into the agent: the
notices run in their own task (`follow()`, owned by the runtime's `serve()`), never in the
agent's loop, and `desktop-notifier` is imported only when a first notice is due (an idle
agent stays small).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from netprobe.config import Settings
from netprobe.core.notices import Notice, Notices, status_fields
from netprobe.errors import NetprobeError
from netprobe.i18n import _

__all__ = ["SEND_TIMEOUT_S", "DesktopNotices", "DesktopSender", "NoticeSource",
           "NotifyUnavailable", "Sender", "follow_notices"]

logger = logging.getLogger(__name__)

APP_NAME = "netprobe"
SEND_TIMEOUT_S = 5.0
"""The longest a notice may take to hand over (a bus that does not answer)."""
#: desktop-notifier logs a failed send (with its traceback) here instead of raising.
_LIBRARY_LOGGER = "desktop_notifier.backends.base"
_NO_SERVER = {"org.freedesktop.DBus.Error.ServiceUnknown",
              "org.freedesktop.DBus.Error.NameHasNoOwner"}


class NotifyUnavailable(NetprobeError):
    """A notice could not be shown; `code` says why (docs/log-format.md, `notify_unavailable`)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"desktop notices unavailable: {code}")
        self.code = code


class Sender(Protocol):
    async def send(self, title: str, body: str) -> None:
        """Show one notice; raise NotifyUnavailable if it cannot be shown."""
        ...


class NoticeSource(Protocol):
    """What the notices need from the agent (the runtime provides it)."""

    @property
    def settings(self) -> Settings: ...
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]: ...
    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None: ...


class _FailureCatcher(logging.Filter):
    """Takes the failure desktop-notifier logs (and would otherwise print with a traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]
            return False
        return True


def _code(error: BaseException | None) -> str:
    """Why a send failed, as a stable code."""
    if error is None:
        return "failed"
    if type(error).__name__ == "InvalidAddressError" or isinstance(error, OSError):
        return "no_session_bus"  # no address, or nothing listening at it
    if getattr(error, "type", None) in _NO_SERVER:
        return "no_notification_server"
    return type(error).__name__


def _find_session_bus(environ: dict[str, str] | os._Environ[str]) -> None:
    """A systemd user service may lack DBUS_SESSION_BUS_ADDRESS although the user's bus is at
    its standard place, $XDG_RUNTIME_DIR/bus (where libdbus and sd-bus look too)."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if environ.get("DBUS_SESSION_BUS_ADDRESS") or not runtime:
        return
    bus = Path(runtime) / "bus"
    try:
        if stat.S_ISSOCK(bus.stat().st_mode):
            environ["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"
    except OSError:
        pass


class DesktopSender:
    """`desktop-notifier` behind `Sender`: a failure it only logs becomes NotifyUnavailable."""

    def __init__(self, app_name: str = APP_NAME, timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.app_name = app_name
        self.timeout_s = timeout_s
        self._notifier: Any = None

    def _make(self) -> Any:
        try:
            from desktop_notifier.main import DesktopNotifier, get_backend_class
        except ImportError:
            raise NotifyUnavailable("not_installed") from None
        if get_backend_class().__name__ == "DummyNotificationCenter":
            raise NotifyUnavailable("no_notification_service")  # macOS outside a bundle...
        _find_session_bus(os.environ)
        return DesktopNotifier(app_name=self.app_name, app_icon=None)

    async def send(self, title: str, body: str) -> None:
        if self._notifier is None:
            self._notifier = self._make()
        shown = False

        def dispatched() -> None:
            nonlocal shown
            shown = True

        catcher = _FailureCatcher()
        library = logging.getLogger(_LIBRARY_LOGGER)
        library.addFilter(catcher)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._notifier.send(title, body, on_dispatched=dispatched)
        except TimeoutError:
            self._notifier = None
            raise NotifyUnavailable("timeout") from None
        except Exception as exc:  # the library's own failure, not the agent's
            self._notifier = None
            raise NotifyUnavailable(_code(exc)) from None
        finally:
            library.removeFilter(catcher)
        if not shown:
            self._notifier = None  # a fresh start next time (the service may come up)
            raise NotifyUnavailable(_code(catcher.error))


class DesktopNotices:
    """Follows `agent`'s status events and shows the notices `Notices` decides on."""

    def __init__(self, agent: NoticeSource, sender: Sender | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.sender: Sender = sender or DesktopSender()
        self.clock = clock
        self.decisions = Notices()
        self.shown: list[Notice] = []
        """Every notice shown, in order (read by tests and the status page)."""
        self._queue = agent.subscribe()  # now: no event between here and follow() is lost
        self._warned = False
        self._failing = False

    async def follow(self) -> None:
        """Run until cancelled; it never ends by itself and never raises into the agent."""
        try:
            while True:
                try:
                    await self._step()
                except Exception:  # a bug here must not end the agent: log once, go on
                    if not self._failing:
                        logger.error("desktop notices failed", exc_info=True, extra={
                            "event": "error", "where": "notify", "error": "notify"})
                    self._failing = True
                    await asyncio.sleep(1.0)
                else:
                    self._failing = False
        finally:
            self.agent.unsubscribe(self._queue)

    async def _step(self) -> None:
        deadline = self.decisions.next_deadline()
        delay = None if deadline is None else max(0.0, deadline - self.clock())
        try:
            async with asyncio.timeout(delay):
                event = await self._queue.get()
        except TimeoutError:
            notices = self.decisions.tick(self.clock())
        else:
            notices = self.decisions.observe(self.clock(), **status_fields(event))
        for notice in notices:
            await self._show(notice)

    async def _show(self, notice: Notice) -> None:
        if not self.agent.settings.agent.notify:
            return
        try:
            await self.sender.send(_(notice.title), notice.phrase.text())
        except NotifyUnavailable as exc:
            if not self._warned:
                logger.warning("desktop notices cannot be shown on this computer (%s); the "
                               "agent carries on without them", exc.code,
                               extra={"event": "notify_unavailable", "error": exc.code})
            self._warned = True
            return
        self._warned = False  # shown again: a later loss is news
        self.shown.append(notice)
        logger.info("desktop notice shown: %s", notice.verdict,
                    extra={"event": "notice_shown", "verdict": notice.verdict})


async def follow_notices(agent: NoticeSource) -> None:
    """The runtime's notices task: `DesktopNotices(agent).follow()`, on the agent's clock."""
    await DesktopNotices(agent, clock=getattr(agent, "clock", time.monotonic)).follow()
