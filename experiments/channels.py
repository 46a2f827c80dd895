"""d2l 7.4 -- Multiple input and multiple output channels, and the 1x1 convolution.

Run: ``python experiments/channels.py`` (a few seconds on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check

from jaxcnn import ops


def book_inputs() -> tuple[jax.Array, jax.Array]:
    """The book's X (2, 3, 3) and K (2, 2, 2)."""
    X = jnp.stack([jnp.arange(9.0).reshape(3, 3), jnp.arange(1.0, 10.0).reshape(3, 3)])
    K = jnp.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return X, K


def main() -> None:
    X, K = book_inputs()
    check("corr2d_multi_in(X, K)", ops.corr2d_multi_in(X, K), [[56, 72], [104, 120]])

    K3 = jnp.stack([K, K + 1, K + 2])
    check("K.shape after stacking K, K+1, K+2 (the book prints (3, 2, 2), a typo)",
          K3.shape, (3, 2, 2, 2))
    check("corr2d_multi_in_out(X, K)", ops.corr2d_multi_in_out(X, K3),
          [[[56, 72], [104, 120]], [[76, 100], [148, 172]], [[96, 128], [192, 224]]])

    kx, kk = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (3, 3, 3))
    K = jax.random.normal(kk, (2, 3, 1, 1))
    Y1 = ops.corr2d_multi_in_out_1x1(X, K)
    Y2 = ops.corr2d_multi_in_out(X, K)
    check("1x1 as a matrix product equals corr2d_multi_in_out (max abs difference)",
          float(jnp.abs(Y1 - Y2).max()), 0.0, atol=1e-6)


if __name__ == "__main__":
    main()
