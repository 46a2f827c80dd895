"""From-scratch Flax NNX layers built on :mod:`jaxcnn.ops` (the book's "from scratch" layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn import ops


class Conv2D(nnx.Module):
    """The book's single-channel convolutional layer (d2l 7.2.2).

    ``weight``: ``kernel_size`` ``(kh, kw)``, uniform in [0, 1) as ``torch.rand``; ``bias``: a
    scalar, zero. ``__call__``: X ``(h, w)`` -> ``corr2d(X, weight) + bias``, ``(h-kh+1, w-kw+1)``.
    """

    def __init__(self, kernel_size: tuple[int, int], *, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), tuple(kernel_size)))
        self.bias = nnx.Param(jnp.zeros(()))

    def __call__(self, X: jax.Array) -> jax.Array:
        return ops.corr2d(X, self.weight[...]) + self.bias[...]
