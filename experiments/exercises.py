# %% [markdown]
# # d2l 7.2-7.5 exercises, answered by computation rather than prose
#
# A script with notebook cells (jupytext percent format): `python experiments/exercises.py` (a
# few seconds on CPU), or open it as a notebook from the `experiments` folder. `check` prints
# each value and fails loudly unless it is the expected one.

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check
from flax import nnx

from jaxcnn import ops

# Identities, checked in full float32: a GPU's default TF32 convolutions and matrix products
# round at about 1e-3 (1x1 conv vs Dense: 1.3e-3 apart on an H200).
jax.config.update("jax_default_matmul_precision", "highest")
KEY = jax.random.key(0)


# %% [markdown]
# ## A 1x1 kernel is a dense layer on each pixel's channels


# %%
def one_by_one_is_dense() -> None:
    """Delta = 0 (a 1x1 kernel): the convolution is a dense layer applied to each pixel's
    channels."""
    conv = nnx.Conv(3, 4, kernel_size=(1, 1), rngs=nnx.Rngs(0))
    dense = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
    dense.kernel[...] = conv.kernel[...].reshape(3, 4)
    dense.bias[...] = conv.bias[...]
    x = jax.random.normal(KEY, (2, 5, 5, 3))
    per_pixel = dense(x.reshape(-1, 3)).reshape(2, 5, 5, 4)
    check("1x1 conv minus per-pixel Dense (max abs difference)",
          float(jnp.abs(conv(x) - per_pixel).max()), 0.0, atol=1e-6)


one_by_one_is_dense()

# %% [markdown]
# ## Two kernels in sequence are one larger kernel


# %%
def two_kernels_are_one() -> None:
    """corr2d(corr2d(X, K1), K2) == corr2d(X, K) with K the full 2-D convolution of K1 and K2,
    of size (k1h + k2h - 1, k1w + k2w - 1)."""
    k1, k2, kx = jax.random.split(KEY, 3)
    K1, K2 = jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (2, 2))
    X = jax.random.normal(kx, (10, 12))
    K = jax.scipy.signal.convolve2d(K1, K2, mode="full")
    check("combined kernel shape", K.shape, (3 + 2 - 1, 4 + 2 - 1))
    sequential, combined = ops.corr2d(ops.corr2d(X, K1), K2), ops.corr2d(X, K)
    check("output shape, two kernels in sequence", sequential.shape,
          (10 - 3 - 2 + 2, 12 - 4 - 2 + 2))
    check("output shape, one combined kernel", combined.shape, (10 - 4 + 1, 12 - 5 + 1))
    check("sequential minus combined (max abs difference)",
          float(jnp.abs(sequential - combined).max()), 0.0, atol=1e-4)


two_kernels_are_one()

# %% [markdown]
# ## What a stride saves


# %%
def stride_cost() -> None:
    """Output size and multiply-adds of a 3x3 conv, 3 -> 16 channels, padding 1, on 224x224,
    as the stride grows: both fall by the square of the stride."""
    x = jnp.ones((1, 224, 224, 3))
    w = jnp.ones((3, 3, 3, 16))
    print("stride  output   multiply-adds")
    for s in (1, 2, 3, 4):
        h = ops.conv_output_size(224, 3, s, 1)
        check(f"stride {s}: conv2d output side", ops.conv2d(x, w, stride=s, padding=1).shape[1], h)
        print(f"{s:>6}  {h:>3}x{h:<3}  {h * h * 3 * 3 * 3 * 16:>12,}")


stride_cost()

# %% [markdown]
# ## Max pooling is not linear, average pooling is a convolution


# %%
def pooling_linearity() -> None:
    """Max pooling is not linear (a counterexample); average pooling is the conv with a constant
    kernel 1 / (kh * kw), padding and stride included."""
    a = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    b = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    pool = lambda t: ops.max_pool2d(t, (1, 2))
    print(f"max(a + b) = {float(pool(a + b).squeeze())}, "
          f"max(a) + max(b) = {float((pool(a) + pool(b)).squeeze())}: not linear")
    assert float(pool(a + b).squeeze()) != float((pool(a) + pool(b)).squeeze())

    x = jax.random.normal(KEY, (2, 7, 7, 3))
    box = jnp.full((3, 3, 1, 3), 1 / 9)                     # depthwise: one kernel per channel
    as_conv = ops.conv2d(x, box, stride=2, padding=1, groups=3)
    check("avg_pool2d minus constant-kernel conv (max abs difference)",
          float(jnp.abs(ops.avg_pool2d(x, 3, stride=2, padding=1) - as_conv).max()), 0.0, atol=1e-6)


pooling_linearity()

# %% [markdown]
# ## Pooling again and again


# %%
def repeated_pooling() -> None:
    """Halving a 16x16 image four times with 2x2 pooling ends at one pixel: the global maximum
    for max pooling, the mean for average pooling."""
    x = jax.random.normal(KEY, (1, 16, 16, 1))
    y_max, y_avg = x, x
    for _ in range(4):
        y_max, y_avg = ops.max_pool2d(y_max, 2), ops.avg_pool2d(y_avg, 2)
    check("repeated max pooling = global max", float(y_max.squeeze()), float(x.max()))
    check("repeated average pooling = mean", float(y_avg.squeeze()), float(x.mean()), atol=1e-6)


repeated_pooling()
