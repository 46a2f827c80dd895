"""JAX's persistent compilation cache for the command line: compiled train and eval steps are
kept on disk, so a resumed or repeated run skips XLA's compile.

``enable()`` points JAX at ``~/.cache/jaxcnn/xla/<machine>`` (``$XDG_CACHE_HOME`` is honoured)
unless ``JAXCNN_COMPILATION_CACHE=0`` or the user chose a cache already
(``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``). ``<machine>`` is a digest of
the CPU's model name and instruction-set flags: XLA's CPU code is compiled for the features of
the CPU it runs on, and JAX's cache key does not name them, so a home directory shared by
machines with other CPUs must not hand one machine's code to another. Every compile is kept
(JAX's default keeps only those over 1 s); the directory is capped at ``MAX_BYTES``, JAX
evicting the least recently used entries.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path

ENV_OFF = "JAXCNN_COMPILATION_CACHE"
MAX_BYTES = 2 * 2**30


def machine_signature() -> str:
    """12 hex digits naming this CPU: its model name and feature flags (``/proc/cpuinfo``), or
    ``platform.processor()`` and the machine type where there is no /proc."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    lines.append(line.strip())
                elif not line.strip() and lines:
                    break                                   # the first processor is enough
    except OSError:
        pass
    text = "\n".join(lines) or f"{platform.processor()} {platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_directory(environ: MutableMapping[str, str] = os.environ) -> Path:
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "jaxcnn" / "xla" / machine_signature()


def enable(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Turn the persistent cache on (see the module docstring); returns its directory, or None
    when it is off or the user's own choice stands. Call before JAX's first compile."""
    if environ.get(ENV_OFF, "1") == "0" or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if environ is os.environ and "jax" in sys.modules:
        import jax
        if jax.config.jax_compilation_cache_dir:
            return None
    directory = default_directory(environ)
    settings = {"JAX_COMPILATION_CACHE_DIR": str(directory),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES)}
    environ.update(settings)
    if environ is os.environ and "jax" in sys.modules:   # JAX read it at import: tell it too
        import jax
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return directory
