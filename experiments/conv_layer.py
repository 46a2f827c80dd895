# %% [markdown]
# # d2l 7.2 -- Convolutions for images
#
# Cross-correlation, edge detection, learning a kernel. A script with notebook cells (jupytext
# percent format): run it with `python experiments/conv_layer.py` (a few seconds on CPU), or
# open it as a notebook (Jupyter or VS Code with jupytext; `jupytext --to ipynb
# experiments/conv_layer.py`), from the `experiments` folder. `check` prints each value and
# fails loudly unless it is the book's.

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
from common import check
from flax import nnx

from jaxcnn import ops

# %% [markdown]
# ## 7.2.1 The cross-correlation operation

# %%
X = jnp.arange(9.0).reshape(3, 3)
K = jnp.array([[0.0, 1.0], [2.0, 3.0]])
check("corr2d(X, K)", ops.corr2d(X, K), [[19, 25], [37, 43]])

# %% [markdown]
# ## 7.2.3 Object edge detection in images
# The book's 6x8 image: ones with a black band in columns 2:6; the kernel `[[1, -1]]` marks its
# vertical edges and misses the horizontal ones.


# %%
def edge_input() -> jax.Array:
    """The book's 6x8 image: ones with a black band in columns 2:6."""
    return jnp.ones((6, 8)).at[:, 2:6].set(0.0)


X = edge_input()
K = jnp.array([[1.0, -1.0]])
Y = ops.corr2d(X, K)
check("edges: corr2d(X, [[1, -1]])", Y, [[0, 1, 0, 0, 0, -1, 0]] * 6)
check("horizontal edges are invisible: corr2d(X.T, K)", ops.corr2d(X.T, K), jnp.zeros((8, 5)))

# %% [markdown]
# ## 7.2.4 Learning a kernel
# A 1x2 convolution learns `[[1, -1]]` back from `X` and `Y` by gradient steps.


# %%
def learn_kernel(X: jax.Array, Y: jax.Array, *, steps: int = 10, lr: float = 3e-2,
                 seed: int = 0) -> tuple[jax.Array, list[float]]:
    """Fit a 1x2 conv (no bias, PyTorch's default uniform init as the book's LazyConv2d) to
    ``Y = corr2d(X, [[1, -1]])`` by plain gradient steps on the summed squared error.
    X, Y: NHWC ``(1, h, w, 1)``. Returns the kernel ``(1, 2)`` and losses."""
    torch_default_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    conv = nnx.Conv(1, 1, kernel_size=(1, 2), padding="VALID", use_bias=False,
                    kernel_init=torch_default_init, rngs=nnx.Rngs(seed))

    def loss_fn(model):
        return ((model(X) - Y) ** 2).sum()

    @nnx.jit
    def step(model):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        model.kernel[...] = model.kernel[...] - lr * grads.kernel[...]
        return loss

    losses = [float(step(conv)) for _ in range(steps)]
    return conv.kernel[...].reshape(1, 2), losses


kernel, losses = learn_kernel(X.reshape(1, 6, 8, 1), Y.reshape(1, 6, 7, 1))
for i in range(1, len(losses), 2):
    print(f"epoch {i + 1}, loss {losses[i]:.3f}")
check("learned kernel (book: [[1.0027, -0.9661]])", kernel, [[1.0, -1.0]], atol=0.1)
assert losses[-1] < losses[0] / 10, f"loss did not fall enough: {losses}"
