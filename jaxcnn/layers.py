"""From-scratch Flax NNX layers built on :mod:`jaxcnn.ops` (the book's "from scratch" layers)."""

from __future__ import annotations

import math

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


# ----------------------------------------------------------------------------------------------
# Building blocks for the models: Flax layers configured as the book's PyTorch ones, and
# parameter-free layers on ops (NHWC in, NHWC out).
# ----------------------------------------------------------------------------------------------

def _rounded(n: int) -> int:
    """``n`` rounded up to a power of two, or above 2**16 to a multiple of an eighth of one
    (four sizes an octave, under 25 % more draws)."""
    bits = max(n - 1, 0).bit_length()
    step = 1 << max(bits - 3, 0) if bits > 16 else 1 << bits
    return -(-n // step) * step


def _uniform(key: jax.Array, shape: tuple[int, ...], dtype, minval, maxval,
             scale: jax.Array | None = None) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)`` (times ``scale``), bit for bit,
    drawn at a rounded flat size (``_rounded``) and cut to ``shape``.

    JAX's threefry draws element ``i`` from ``(key, i)`` alone (``jax_threefry_partitionable``,
    the default; without it the exact size is drawn), so a longer draw starts with the shorter
    one. Built eagerly, each distinct shape would compile its own random program (0.14 s each
    on a CPU; GoogLeNet has 122 shapes); rounded sizes share a few. Under a trace
    (``jax.vmap``, ``eval_shape``) it is the same ops in jnp.
    """
    n = math.prod(shape)
    size = _rounded(n) if jax.config.jax_threefry_partitionable else n
    flat = jax.random.uniform(key, (size,), dtype, minval, maxval)
    if scale is not None:
        flat = flat * scale
    if isinstance(flat, jax.core.Tracer):
        return flat[:n].reshape(shape)
    return jax.device_put(jax.device_get(flat)[:n].reshape(shape))   # explicit transfers


def xavier_uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """The book's ``init_cnn`` for conv (HWIO) and dense (in, out) kernels: the values of
    ``nnx.initializers.xavier_uniform()`` (uniform in +-sqrt(6 / (fan_in + fan_out)))."""
    receptive = math.prod(shape[:-2])
    fan_avg = (shape[-2] + shape[-1]) * receptive / 2
    variance = jnp.array(1.0 / fan_avg, dtype)
    return _uniform(key, tuple(shape), dtype, -1, 1, jnp.sqrt(3 * variance))


def torch_bias_init(fan_in: int):
    """PyTorch's default bias initialisation, which the book's ``init_cnn`` keeps:
    uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return _uniform(key, tuple(shape), dtype, -bound, bound)

    return init


class Conv(nnx.Conv):
    """``nnx.Conv`` that explains a wrong input layout or dtype instead of failing deep inside
    XLA. The checks read only static shapes, so they cost nothing under jit."""

    def __call__(self, x: jax.Array) -> jax.Array:
        shape, c = tuple(x.shape), self.in_features
        if len(shape) != 4 or shape[-1] != c:
            hint = ("; it looks like NCHW: transpose it with x.transpose(0, 2, 3, 1)"
                    if len(shape) == 4 and shape[1] == c else "")
            raise ValueError(f"expected NHWC input (batch, height, width, {c} channels); got "
                             f"shape {shape}{hint}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"expected floating-point NHWC images (float32 in [0, 1], e.g. from "
                            f"jaxcnn.data.preprocess); got dtype {x.dtype}")
        return super().__call__(x)


def conv(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
         padding: int = 0, groups: int = 1, use_bias: bool = True, rngs: nnx.Rngs) -> Conv:
    """``nn.Conv2d`` as the book uses it: square kernel, symmetric zero padding, Xavier-uniform
    kernel (HWIO), PyTorch's default bias. ``groups`` is the number of groups."""
    fan_in = in_channels // groups * kernel_size * kernel_size
    return Conv(in_channels, out_channels, kernel_size=(kernel_size, kernel_size),
                strides=stride, padding=padding, feature_group_count=groups,
                use_bias=use_bias, kernel_init=xavier_uniform, bias_init=torch_bias_init(fan_in),
                rngs=rngs)


class Linear(nnx.Linear):
    """``nnx.Linear`` that explains a wrong input width instead of failing inside XLA: after a
    flatten it means images of another size than the model was built for."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"a dense layer expected (batch, {self.in_features}) features; got "
                             f"shape {tuple(x.shape)}. After a flatten this means images of "
                             f"another size than the model was built for: build it with "
                             f"models.create(name, image_size=...) for your images")
        return super().__call__(x)


def dense(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> Linear:
    """``nn.Linear`` with the book's Xavier-uniform kernel and PyTorch's default bias."""
    return Linear(in_features, out_features, kernel_init=xavier_uniform,
                  bias_init=torch_bias_init(in_features), rngs=rngs)


class FlaxBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` whose train mode is ``ops.batch_norm_train`` (statistics in one pass,
    a two-reduction gradient), with nnx's state, momentum and output dtype; it refuses batch
    statistics of an empty batch (NaN running averages otherwise). Eval mode, masks and
    cross-device ``axis_name`` statistics are nnx's own."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        _require_batch(x, use_running_average)
        if (use_running_average or mask is not None or self.axis_name is not None
                or self.axis not in (-1, x.ndim - 1) or self.scale is None or self.bias is None):
            return super().__call__(x, use_running_average, mask=mask)
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]),
                                            dtype=self.dtype)
        y, mean, var = ops.batch_norm_train(x, scale, bias, self.epsilon)
        self.mean[...] = jax.lax.stop_gradient(
            self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(
            self.momentum * self.var[...] + (1 - self.momentum) * var)
        return y if self.dtype is None else y.astype(self.dtype)


def _require_batch(x: jax.Array, use_running_average: bool) -> None:
    if not use_running_average and x.size == 0:
        raise ValueError(f"BatchNorm in train mode takes the statistics of its batch, and an "
                         f"empty batch has none (x has shape {tuple(x.shape)}); call "
                         f"model.eval() to use the running averages")


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``nnx.BatchNorm`` with PyTorch's defaults: running = 0.9 * running + 0.1 * batch
    (Flax's ``momentum=0.9``; Flax defaults to 0.99), eps 1e-5, statistics over all axes but the
    last (N, H, W for NHWC). The batch variance is the biased one, taken about one example's
    values (``ops.batch_norm_train``), not Flax's fast ``mean(x**2) - mean**2``, which cancels
    badly for near-constant channels."""
    return FlaxBatchNorm(num_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                         rngs=rngs)


class MaxPool2d(nnx.Module):
    """``ops.max_pool2d`` as a layer: ``(N, H, W, C) -> (N, H', W', C)``."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    """``ops.avg_pool2d`` as a layer: ``(N, H, W, C) -> (N, H', W', C)``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``nn.AdaptiveAvgPool2d((1, 1))`` followed by ``nn.Flatten``: ``(N, H, W, C) -> (N, C)``."""
    return x.mean(axis=(1, 2))


def flatten(x: jax.Array) -> jax.Array:
    """``nn.Flatten``: ``(N, ...) -> (N, prod(...))`` (NHWC order, so H, W, C); ``N`` may be 0."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


class BatchNorm(nnx.Module):
    """The book's from-scratch BatchNorm layer (d2l 8.5.2) on ``ops.batch_norm``; NHWC
    ``(N, H, W, C)`` or dense ``(N, C)`` in, the same shape out, ``C = num_features``.

    State as ``nnx.BatchNorm``'s: ``scale`` (ones) and ``bias`` (zeros) are ``nnx.Param``,
    the moving ``mean`` (zeros) and ``var`` (ones) are ``nnx.BatchStat``. ``use_running_average``
    (set by ``model.train()`` / ``model.eval()`` / ``nnx.view``, or passed to the call) picks the
    moving averages instead of the batch statistics, which otherwise update the moving ones.
    ``momentum`` is PyTorch's: 0.1 here equals ``nnx.BatchNorm(momentum=0.9)``.
    """

    def __init__(self, num_features: int, *, use_running_average: bool = False,
                 momentum: float = 0.1, epsilon: float = 1e-5, dtype=None):
        self.scale = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.var = nnx.BatchStat(jnp.ones((num_features,)))
        self.use_running_average = use_running_average
        self.momentum, self.epsilon = momentum, epsilon
        self.dtype = dtype   # of the output, as nnx.BatchNorm's (None: float32)

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        _require_batch(x, use_running_average)
        # As nnx.BatchNorm: statistics in float32 (at least), the output in the compute dtype.
        y, self.mean[...], self.var[...] = ops.batch_norm(
            x.astype(jnp.promote_types(x.dtype, jnp.float32)), self.scale[...], self.bias[...],
            self.mean[...], self.var[...], train=not use_running_average, eps=self.epsilon,
            momentum=self.momentum)
        return y if self.dtype is None else y.astype(self.dtype)

    def set_view(self, use_running_average: bool | None = None):
        """Used by ``nnx.view``, as ``nnx.BatchNorm.set_view``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
