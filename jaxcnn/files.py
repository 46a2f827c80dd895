"""Small file helpers shared by the modules that write files (data, report, checkpoints)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(file_object)`` into a temporary file beside it
    (``.NAME.XXXXXXXX.tmp``), then rename: readers see the old file or the new one, never half.
    The file gets the permissions the umask gives (not ``mkstemp``'s 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)          # mkstemp's 0600 would hide results from others
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
