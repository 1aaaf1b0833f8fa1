"""Carrying out a service plan: running the service manager's commands, writing, creating and
removing files. The only module of `netprobe.service` that starts processes or writes files;
its failures come out as `NetprobeError`."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath

from netprobe.errors import NetprobeError
from netprobe.service.plan import Command, MakeDirs, RemoveFile, Step, WriteFile

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60.0

RunCommand = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], program: str | None,
                missing_advice: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `program` (the path of ``argv[0]``; None: not installed)."""
    if program is None:
        raise NetprobeError(f"{argv[0]} not found: {missing_advice}")
    log.debug("running %s", shlex.join(argv))
    try:
        return subprocess.run([program, *argv[1:]], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise NetprobeError(f"{shlex.join(argv)} did not finish within "
                            f"{COMMAND_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise NetprobeError(f"cannot run {argv[0]}: {exc.strerror}") from None


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    """What a command said about its failure."""
    return proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"


def read_existing(path: PurePath) -> bytes | None:
    """The file's bytes, None if there is none."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetprobeError(f"cannot read {path}: {exc.strerror}") from None


def is_program(path: str) -> bool:
    exe = Path(path)
    return exe.is_file() and os.access(exe, os.X_OK)


def carry_out(steps: Sequence[Step], run: RunCommand) -> None:
    """Take the steps in order; the first that fails stops the plan with a `NetprobeError`."""
    for step in steps:
        log.info("%s", step)
        try:
            if isinstance(step, MakeDirs):
                Path(step.path).mkdir(parents=True, exist_ok=True)
                if step.owner:
                    shutil.chown(step.path, user=step.owner)
            elif isinstance(step, WriteFile):
                write_atomic(Path(step.path), step.data, step.mode)
            elif isinstance(step, RemoveFile):
                Path(step.path).unlink(missing_ok=True)
            elif isinstance(step, Command):
                proc = run(step.argv)
                if proc.returncode != 0:
                    said = output_of(proc)
                    if step.may_fail:
                        log.info("ignored: %s: %s", step, said)
                        continue
                    raise NetprobeError(f"`{step}` failed: {said}")
        except (OSError, LookupError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise NetprobeError(f"could not {step}: {reason}") from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file, so the file is never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
