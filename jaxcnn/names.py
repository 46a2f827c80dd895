"""The names that messages give settings: library code reads Config fields and keyword
arguments (``batch_size``, ``force_new=True``), the command line reads its flags
(``--batch-size``, ``--force-new``). The CLI runs inside ``flags(known)``; everything else sees
the library's names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

_flags: frozenset[str] = frozenset()     # the settings the running CLI has flags for


@contextlib.contextmanager
def flags(known: Iterable[str]) -> Iterator[None]:
    """Within: name the settings in ``known`` (Config field names) by their flags."""
    global _flags
    before, _flags = _flags, frozenset(known)
    try:
        yield
    finally:
        _flags = before


def setting(name: str) -> str:
    """``name`` (a Config field or keyword argument) as its reader knows it."""
    return "--" + name.replace("_", "-") if name in _flags else name


def switch(name: str) -> str:
    """A boolean option turned on, as its reader would write it: ``--force-new`` or
    ``force_new=True``."""
    return setting(name) if name in _flags else f"{name}=True"
