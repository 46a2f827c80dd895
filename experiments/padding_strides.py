# %% [markdown]
# # d2l 7.3 -- Padding and stride
#
# Output shapes of a convolution on an 8x8 input, and the book's formula for them. A script
# with notebook cells (jupytext percent format): `python experiments/padding_strides.py` (a few
# seconds on CPU), or open it as a notebook from the `experiments` folder. `check` prints each
# value and fails loudly unless it is the book's.

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check

from jaxcnn import ops

# %% [markdown]
# ## 7.3.1 Padding and 7.3.2 Stride
# The book's four cases: (kernel, padding, stride) and the output shape it prints.

# %%
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


for kernel, padding, stride, expected in BOOK_CASES:
    label = f"kernel {kernel}, padding {padding}, stride {stride}"
    check(label, output_shape(kernel, padding, stride), expected)
    pads = (padding, padding) if isinstance(padding, int) else padding
    strides = (stride, stride) if isinstance(stride, int) else stride
    formula = [ops.conv_output_size(8, k, s, p)
               for k, s, p in zip(kernel, strides, pads, strict=True)]
    check(f"  floor((n - k + p + s) / s) for {label}", formula, expected)

# %%
print("'SAME' keeps 8x8 at stride 1:", ops.conv2d(jnp.ones((1, 8, 8, 1)),
                                                 jnp.ones((3, 3, 1, 1)), padding="SAME").shape)
