"""XLA settings the CLI applies before JAX starts its backends, measured with ``jaxcnn bench``.

XLA's CPU compiler (jaxlib 0.8.1 and later) hands some convolution and elementwise fusions to
its experimental YNNPACK path. For the book's models on x86 CPUs that path is slower: turning it
off (``--xla_cpu_experimental_ynn_fusion_type=``, an empty list) measured VGG +69 %, LeNet
+19-25 % and ResNet-18 +16 % train-step images/s (experiments/RESULTS.md). XLA aborts the
process on a flag it does not know, so the flag is added only for jaxlib releases whose binaries
were checked to register it, never when ``XLA_FLAGS`` already names it, and never with
``JAXCNN_XLA_DEFAULTS=0``. It only affects the CPU backend; a GPU run ignores it.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from importlib import metadata

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# jaxlib releases whose XLA registers the flag: first in 0.8.1 (absent from 0.8.0), checked in
# the binaries of 0.8.1, 0.8.2, 0.8.3, 0.9.0, 0.9.2, 0.10.0 and 0.10.2; 0.11 was not available
# to check, so it is left alone.
KNOWN_JAXLIB = ((0, 8, 1), (0, 11, 0))


def _version(text: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; suffixes such as ``rc1`` or ``.dev2026`` are dropped."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def cpu_defaults(jaxlib_version: str | None = None) -> list[str]:
    """The flags to add for this jaxlib (``jaxlib_version`` as ``"0.10.2"``; default: the
    installed one): ``[YNN_FUSION_FLAG + "="]`` inside ``KNOWN_JAXLIB``, else ``[]``."""
    if jaxlib_version is None:
        try:
            jaxlib_version = metadata.version("jaxlib")
        except metadata.PackageNotFoundError:
            return []
    low, high = KNOWN_JAXLIB
    return [f"{YNN_FUSION_FLAG}="] if low <= _version(jaxlib_version) < high else []


def apply(environ: MutableMapping[str, str] = os.environ,
          jaxlib_version: str | None = None) -> list[str]:
    """Append ``cpu_defaults()`` to ``environ["XLA_FLAGS"]`` unless it already names them or
    ``JAXCNN_XLA_DEFAULTS=0``; returns the flags added. Takes effect only if called before
    JAX's first computation (backends read ``XLA_FLAGS`` once, when they start)."""
    if environ.get("JAXCNN_XLA_DEFAULTS", "1") == "0":
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [flag for flag in cpu_defaults(jaxlib_version)
             if flag.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([*current.split(), *added])
    return added
