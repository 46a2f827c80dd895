# %% [markdown]
# # d2l 7.5 -- Pooling
#
# The book's `pool2d`, then padding, stride and channels with `max_pool2d`. A script with
# notebook cells (jupytext percent format): `python experiments/pooling.py` (a few seconds on
# CPU), or open it as a notebook from the `experiments` folder. `check` prints each value and
# fails loudly unless it is the book's.

# %%
from __future__ import annotations

import jax.numpy as jnp
from common import check

from jaxcnn import ops

# %% [markdown]
# ## 7.5.1 Maximum pooling and average pooling

# %%
X = jnp.arange(9.0).reshape(3, 3)
check("pool2d(X, (2, 2))", ops.pool2d(X, (2, 2)), [[4, 5], [7, 8]])
check("pool2d(X, (2, 2), 'avg')", ops.pool2d(X, (2, 2), "avg"), [[2, 3], [5, 6]])

# %% [markdown]
# ## 7.5.2 Padding and stride
# On NHWC images: the window defaults to its own size as the stride, as PyTorch's.

# %%
X = jnp.arange(16.0).reshape(1, 4, 4, 1)                     # NHWC
check("max_pool2d(X, 3)", ops.max_pool2d(X, 3)[0, :, :, 0], [[10]])
check("max_pool2d(X, 3, padding=1, stride=2)",
      ops.max_pool2d(X, 3, padding=1, stride=2)[0, :, :, 0], [[5, 7], [13, 15]])
check("max_pool2d(X, (2, 3), stride=(2, 3), padding=(0, 1))",
      ops.max_pool2d(X, (2, 3), stride=(2, 3), padding=(0, 1))[0, :, :, 0],
      [[5, 7], [13, 15]])

# %% [markdown]
# ## 7.5.3 Multiple channels
# Each channel is pooled on its own: the output has as many channels as the input.

# %%
X2 = jnp.concatenate([X, X + 1], axis=-1)                    # two channels, last axis
Y = ops.max_pool2d(X2, 3, padding=1, stride=2)
check("two channels X, X + 1 (channels-first for printing)", jnp.moveaxis(Y[0], -1, 0),
      [[[5, 7], [13, 15]], [[6, 8], [14, 16]]])
