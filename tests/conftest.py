"""Fixtures shared by the tests: comparing two training runs that should be the same run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import pytest

# XLA's CPU backend repeats a computation bit for bit. A GPU's does not: on an H200 (jax
# 0.11.2) two fresh runs of one config already differed in the 7th digit of the first epoch's
# mean loss, so runs compared there agree to float32 noise, not to the bit.
EXACT = jax.default_backend() == "cpu"


@pytest.fixture
def assert_same_metrics() -> Callable[..., None]:
    """``check(got, want, keys)``: the rows (dicts) agree on ``keys``; bit for bit on the CPU,
    else floats to 1e-4 relative (losses) or 0.002 (accuracies: 20 of 10,000 images) and
    other values exactly."""
    def check(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]],
              keys: Sequence[str]) -> None:
        assert len(got) == len(want)
        for key in keys:
            a, b = [r[key] for r in got], [r[key] for r in want]
            if EXACT or not all(isinstance(v, float) for v in b):   # names, counts
                assert a == b, key
            else:
                tolerance = dict(abs=2e-3) if "acc" in key else dict(rel=1e-4)
                assert a == pytest.approx(b, **tolerance), key
    return check


@pytest.fixture
def assert_same_state() -> Callable[[Any, Any], None]:
    """``check(got, want)``: two pytrees of arrays are equal; bitwise on the CPU, else to
    1e-3 relative (a resume from the wrong step or data order misses by far more)."""
    def check(got: Any, want: Any) -> None:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            if EXACT:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            else:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
    return check
