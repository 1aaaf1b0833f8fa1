"""What a reflector's worker processes share, through the reflector's private run directory
(docs/reflector.md, "Workers"): their figures and the check tokens they have spent.

The workers share no session and no lock. Each one writes a snapshot of its counters to
`worker-<index>.json` about once a second (written whole, then renamed into place), and any
worker's `/metrics` and `/healthz` answer sums its own figures with the other workers' files and
with `retired.json`, the counters of workers that have exited (the supervisor folds a dead
worker's last snapshot in there before it starts the replacement, so the sums never go back).
A check token's offers (`tokens.CHECK_OFFERS` within `tokens.CHECK_RETRY_S` of the first) are
counted per reflector, not per worker: each offer also creates a file named after its `jti`'s
hash with `O_EXCL`, which only one process can do: `<hash>` for the first (holding its time),
`<hash>.2`, `<hash>.3` for the retries. The reflector's TURN self-check (worker 0's) is kept in
`turn.json` for every worker's `/metrics`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

from netprobe.settings import ReflectorSettings
from netprobe.tokens import CHECK_OFFERS, CHECK_RETRY_S, LEEWAY_S, ReplayCache
from netprobe.webrtc.reflector_ops import Snapshot

logger = logging.getLogger(__name__)

RETIRED = "retired.json"
TURN = "turn.json"
TOKENS = "spent-tokens"
PUBLISH_EVERY_S = 1.0
"""How often a worker writes its snapshot (so `/metrics` lags the other workers by about this)."""


def _worker_file(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.json"


def _write_whole(path: Path, doc: object) -> None:
    """Write `doc` as JSON to a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> Snapshot | None:
    """The snapshot in `path`, or None if there is none or it cannot be read."""
    try:
        return Snapshot.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("ignored an unreadable worker snapshot: %s", path.name)
        return None


class WorkerShare:
    """One worker's side of the run directory."""

    def __init__(self, run_dir: Path | str, index: int, workers: int,
                 whole: ReflectorSettings) -> None:
        self.run_dir = Path(run_dir)
        self.index = index
        self.workers = workers
        self.whole = whole
        """The reflector's settings before its caps were split (what `/healthz` reports)."""
        self.replay = SharedReplayCache(self.run_dir / TOKENS)

    def publish(self, snap: Snapshot) -> None:
        try:
            _write_whole(_worker_file(self.run_dir, self.index),
                         {**snap.to_json(), "pid": os.getpid()})
        except OSError as exc:  # a full or vanished run directory must not stop the worker
            logger.warning("cannot write this worker's snapshot: %s", exc.strerror or exc)

    def total(self, own: Snapshot) -> Snapshot:
        """`own` summed with the other live workers' latest snapshots and the exited ones'."""
        total = Snapshot(draining=own.draining, rss=0, workers=0)
        total.add(own)
        for index in range(self.workers):
            if index != self.index and (snap := _read(_worker_file(self.run_dir, index))):
                total.add(snap)
        if retired := _read(self.run_dir / RETIRED):
            total.add(retired, counters_only=True)
        return total

    def tidy(self, now: float) -> None:
        """Forget spent tokens that have expired (their files), from time to time."""
        self.replay.tidy(now)

    def publish_turn(self, ok: dict[str, int]) -> None:
        """Record the TURN self-check's outcome per URL (`{"1": 1, "2": 0}`) for all workers."""
        try:
            _write_whole(self.run_dir / TURN, ok)
        except OSError as exc:
            logger.warning("cannot write the TURN self-check: %s", exc.strerror or exc)

    def turn(self) -> dict[str, int]:
        """The latest TURN self-check outcome any worker recorded (empty: none yet)."""
        try:
            doc = json.loads((self.run_dir / TURN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {str(k): int(v) for k, v in doc.items() if v in (0, 1)}


def retire(run_dir: Path | str, index: int) -> None:
    """Fold the exited worker `index`'s last snapshot into `retired.json` (supervisor side)."""
    run_dir = Path(run_dir)
    path = _worker_file(run_dir, index)
    last = _read(path)
    if last is None:
        return
    retired = _read(run_dir / RETIRED) or Snapshot()
    retired.add(last, counters_only=True)
    retired.live.clear()
    retired.live_sent = retired.live_received = retired.sources = 0
    try:
        _write_whole(run_dir / RETIRED, retired.to_json())
        path.unlink()
    except OSError as exc:
        logger.warning("cannot fold an exited worker's counters in: %s", exc.strerror or exc)


class SharedReplayCache(ReplayCache):
    """`tokens.ReplayCache` whose record is also kept in a directory every worker shares: a
    check token's offers are counted across the workers (see the module's doc)."""

    TIDY_EVERY_S = 60.0

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self._tidied_at = 0.0
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)

    def _path(self, jti: str, offer: int = 1) -> Path:
        name = hashlib.sha256(jti.encode()).hexdigest()[:40]
        return self.directory / (name if offer == 1 else f"{name}.{offer}")

    def _first(self, jti: str, now: float) -> float | None:
        """When the token's first offer was taken by any worker (None: not yet). A record
        being written this instant reads as `now`."""
        try:
            text = self._path(jti).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return now
        try:
            return float(text)
        except ValueError:
            return now

    def used(self, jti: str, now: float) -> bool:
        if super().used(jti, now):
            return True
        first = self._first(jti, now)
        return first is not None and (now - first > CHECK_RETRY_S
                                      or self._path(jti, CHECK_OFFERS).exists())

    def _create(self, path: Path, exp: float, text: str) -> bool:
        """Create `path` exclusively (holding `text`, its mtime `exp`: when it may go); False
        if it exists. Raises OSError if the record cannot be kept."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.utime(path, (exp, exp))
        return True

    def _take(self, jti: str, exp: float, now: float) -> bool:
        """Take the token's next offer in the shared record; False if none is left."""
        if self._create(self._path(jti), exp, repr(now)):
            return True
        first = self._first(jti, now)
        if first is not None and now - first > CHECK_RETRY_S:
            return False
        return any(self._create(self._path(jti, offer), exp, "")
                   for offer in range(2, CHECK_OFFERS + 1))

    def use(self, jti: str, exp: float, now: float) -> bool:
        if not super().use(jti, exp, now):
            return False
        try:
            taken = self._take(jti, exp, now)
        except OSError as exc:  # the record cannot be kept: this process's still is
            logger.warning("cannot record a spent check token: %s", exc.strerror or exc)
            return True
        if not taken:  # other workers took its offers first
            self.exhaust(jti)
        return taken

    def tidy(self, now: float) -> None:
        if now - self._tidied_at < self.TIDY_EVERY_S:
            return
        self._tidied_at = now
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime <= now - LEEWAY_S:
                    os.unlink(entry.path)
