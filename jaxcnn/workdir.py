"""The rules of a run's directory: one run at a time (a lock), no partial writes left behind, and
``--force-new``'s clean slate. ``fit`` takes the lock; ``eval``, ``report`` and ``load_model``
only read and never take it.

The lock is an ``fcntl.flock`` on ``WORKDIR/.lock``, taken by process 0 of a run. The kernel
drops it when its holder exits in any way (``kill -9`` included), so a lock file left behind
by a dead run is no obstacle; the file only says who holds (or last held) the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from jaxcnn.names import setting

LOCK_NAME = ".lock"
# The files a run writes through ``report.atomic_write`` (as ``.NAME.XXXXXXXX.tmp`` first).
RUN_FILES = ("metrics.jsonl", "curves.png", "config.json", "summary.json")
RUN_DIRS = ("checkpoints", "report", "tensorboard")     # what else a run writes


class WorkdirBusyError(OSError):
    """Another live run holds the workdir's lock."""


class WorkdirLock:
    """An exclusive lock on ``workdir`` for this process (a context manager). ``acquire``
    raises ``WorkdirBusyError`` naming the holder when another run has it."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirBusyError(
                f"workdir {str(self.workdir)!r} is in use by process {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')} since {holder.get('since', '?')}; wait for it "
                f"to finish, or use another {setting('workdir')}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def create(workdir: Path) -> None:
    """Make ``workdir`` (and its parents) and check that this process can write in it."""
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {str(workdir)!r} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(f"workdir {str(workdir)!r} is not writable: "
                      f"{error.strerror or error}") from error


def remove_partial_writes(workdir: Path) -> None:
    """Delete the temporary files a killed run's atomic writes of ``RUN_FILES`` left; nothing
    else (a user's own ``.*.tmp`` files, or directories of such names, stay)."""
    for name in RUN_FILES:
        for leftover in workdir.glob(f".{name}.*.tmp"):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()


def start_over(workdir: Path) -> None:
    """``--force-new``: remove what a run wrote (never the user's other files)."""
    for name in RUN_DIRS:
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in RUN_FILES:
        (workdir / name).unlink(missing_ok=True)
