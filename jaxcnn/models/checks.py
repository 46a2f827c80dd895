"""Checks of the models' constructor arguments, so that a bad ``arch`` or width is refused when
the model is built, with what was expected and what came, instead of failing inside XLA."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any


def is_positive_int(value: Any) -> bool:
    """An int (NumPy's too, not a bool) of at least 1."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def is_positive_number(value: Any) -> bool:
    """A finite real number (not a bool) above 0."""
    return (isinstance(value, Real) and not isinstance(value, bool) and value > 0
            and (isinstance(value, Integral) or math.isfinite(value)))


def positive_int(model: str, name: str, value: Any) -> int:
    """``value`` as an int; ``ValueError`` naming ``model`` and ``name`` unless it is >= 1."""
    if not is_positive_int(value):
        raise ValueError(f"{model}: {name} must be a positive int, got {value!r}")
    return int(value)


def arch_rows(model: str, arch: Any, fields: Sequence[str],
              numbers: Sequence[str] = ()) -> tuple[tuple, ...]:
    """``arch`` as a tuple of rows, one value per name in ``fields``: positive ints, or positive
    numbers for the fields in ``numbers``. A list of lists (config.json's form) is taken too.
    ``ValueError`` naming ``model``, the row layout and what was received otherwise."""
    layout = f"({', '.join(fields)})"
    if isinstance(arch, (str, bytes)) or not isinstance(arch, Sequence) or not arch:
        raise ValueError(f"{model}: arch must be a non-empty sequence of {layout} rows; got "
                         f"{arch!r}")
    rows = []
    for row in arch:
        if (isinstance(row, (str, bytes)) or not isinstance(row, Sequence)
                or len(row) != len(fields)):
            raise ValueError(f"{model}: each arch row must be {layout}; got {row!r} in arch "
                             f"{arch!r}")
        for name, value in zip(fields, row, strict=True):
            ok = is_positive_number(value) if name in numbers else is_positive_int(value)
            if not ok:
                kind = "number" if name in numbers else "int"
                raise ValueError(f"{model}: {name} must be a positive {kind} in each arch row "
                                 f"{layout}; got {value!r} in {tuple(row)!r}")
        rows.append(tuple(float(v) if n in numbers else int(v)
                          for n, v in zip(fields, row, strict=True)))
    return tuple(rows)
