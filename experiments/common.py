"""Shared by the experiment scripts: print a value beside the book's and fail loudly on a
mismatch."""

from __future__ import annotations

import numpy as np


def check(label: str, got, expected, atol: float = 1e-5) -> None:
    """Print ``label: got`` and raise ``AssertionError`` unless it equals ``expected``."""
    got, expected = np.asarray(got), np.asarray(expected)
    print(f"{label}:\n{got}")
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol):
        raise AssertionError(f"{label}: expected {expected.shape}\n{expected}\n"
                             f"got {got.shape}\n{got}")
