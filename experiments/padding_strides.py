"""d2l 7.3 -- Padding and stride: output shapes of a convolution on an 8x8 input.

Run: ``python experiments/padding_strides.py`` (a few seconds on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check

from jaxcnn import ops

# (kernel, padding, stride) -> the book's output shape on an 8x8 input.
BOOK_CASES = [
    ((3, 3), 1, 1, (8, 8)),
    ((5, 3), (2, 1), 1, (8, 8)),
    ((3, 3), 1, 2, (4, 4)),
    ((3, 5), (0, 1), (3, 4), (2, 2)),
]


def output_shape(kernel, padding, stride) -> tuple[int, int]:
    """Shape of ``conv2d`` on a (1, 8, 8, 1) input, as the book's ``comp_conv2d``."""
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1))
    w = jax.random.uniform(jax.random.key(1), (*kernel, 1, 1))
    return ops.conv2d(x, w, padding=padding, stride=stride).shape[1:3]


def main() -> None:
    for kernel, padding, stride, expected in BOOK_CASES:
        label = f"kernel {kernel}, padding {padding}, stride {stride}"
        check(label, output_shape(kernel, padding, stride), expected)
        pads = (padding, padding) if isinstance(padding, int) else padding
        strides = (stride, stride) if isinstance(stride, int) else stride
        formula = [ops.conv_output_size(8, k, s, p)
                   for k, s, p in zip(kernel, strides, pads, strict=True)]
        check(f"  floor((n - k + p + s) / s) for {label}", formula, expected)
    print("'SAME' keeps 8x8 at stride 1:", ops.conv2d(jnp.ones((1, 8, 8, 1)),
                                                     jnp.ones((3, 3, 1, 1)), padding="SAME").shape)


if __name__ == "__main__":
    main()
