# %% [markdown]
# # d2l 7.4 -- Multiple input and multiple output channels, and the 1x1 convolution
#
# A script with notebook cells (jupytext percent format): `python experiments/channels.py` (a
# few seconds on CPU), or open it as a notebook from the `experiments` folder. `check` prints
# each value and fails loudly unless it is the book's.

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check

from jaxcnn import ops

# %% [markdown]
# ## 7.4.1 Multiple input channels


# %%
def book_inputs() -> tuple[jax.Array, jax.Array]:
    """The book's X (2, 3, 3) and K (2, 2, 2)."""
    X = jnp.stack([jnp.arange(9.0).reshape(3, 3), jnp.arange(1.0, 10.0).reshape(3, 3)])
    K = jnp.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return X, K


X, K = book_inputs()
check("corr2d_multi_in(X, K)", ops.corr2d_multi_in(X, K), [[56, 72], [104, 120]])

# %% [markdown]
# ## 7.4.2 Multiple output channels

# %%
K3 = jnp.stack([K, K + 1, K + 2])
check("K.shape after stacking K, K+1, K+2 (the book prints (3, 2, 2), a typo)",
      K3.shape, (3, 2, 2, 2))
check("corr2d_multi_in_out(X, K)", ops.corr2d_multi_in_out(X, K3),
      [[[56, 72], [104, 120]], [[76, 100], [148, 172]], [[96, 128], [192, 224]]])

# %% [markdown]
# ## 7.4.3 The 1x1 convolutional layer
# A 1x1 convolution is a matrix product over the channels at each pixel.

# %%
kx, kk = jax.random.split(jax.random.key(0))
X = jax.random.normal(kx, (3, 3, 3))
K = jax.random.normal(kk, (2, 3, 1, 1))
Y1 = ops.corr2d_multi_in_out_1x1(X, K)
Y2 = ops.corr2d_multi_in_out(X, K)
check("1x1 as a matrix product equals corr2d_multi_in_out (max abs difference)",
      float(jnp.abs(Y1 - Y2).max()), 0.0, atol=1e-6)
