"""Functional convolution and pooling primitives (d2l 7.2-7.5).

Two families, tested against each other:

* The book's references, in the book's layouts: ``corr2d`` on ``(h, w)``, the multi-channel
  variants on channels-first ``(c, h, w)`` with kernels ``(c_o, c_i, kh, kw)``, and ``pool2d``.
  They are the definitions the text gives (no padding, stride 1), written as one vectorized
  gather of sliding windows, so they jit, vmap and differentiate.
* Production ops on Flax's layouts through ``jax.lax``: images **NHWC**, kernels **HWIO**.
  Padding and pooling follow PyTorch's semantics, so the book's numbers come out the same.

Every op is pure. Bad shapes raise ``ValueError`` naming the expected layout and what arrived;
non-float input to an op that needs floats raises ``TypeError``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from numbers import Integral
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IntPair = int | Sequence[int]
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]
# conv2d refuses larger outputs (8 GiB in float32): a mistaken padding such as 10**6 would
# otherwise abort the process when XLA allocates it.
MAX_OUTPUT_ELEMENTS = 2**31


# --------------------------------------------------------------------------------------------
# Argument checks shared by both families
# --------------------------------------------------------------------------------------------

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_float(x: jax.Array, name: str, op: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: expected a floating-point {name}, got dtype {x.dtype}")


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    """An int or a 2-sequence as ``(h, w)``."""
    if isinstance(value, Integral):
        return (int(value), int(value))
    _require(isinstance(value, Sequence) and len(value) == 2
             and all(isinstance(v, Integral) for v in value),
             f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    return (int(value[0]), int(value[1]))


def _positive_pair(value: IntPair, name: str) -> tuple[int, int]:
    pair = _pair(value, name)
    _require(min(pair) > 0, f"{name} must be positive, got {value!r}")
    return pair


def _padding_pairs(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit padding as ``((top, bottom), (left, right))`` from an int, ``(p_h, p_w)`` or
    per-side pairs ``((top, bottom), (left, right))``."""
    if isinstance(padding, Integral):
        pads = ((int(padding),) * 2,) * 2
    elif (isinstance(padding, Sequence) and len(padding) == 2
          and all(isinstance(p, Integral) for p in padding)):
        pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    elif (isinstance(padding, Sequence) and len(padding) == 2
          and all(isinstance(p, Sequence) and len(p) == 2
                  and all(isinstance(q, Integral) for q in p) for p in padding)):
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    else:
        raise ValueError("padding must be 'SAME', 'VALID', an int, a pair (p_h, p_w) or "
                         f"per-side pairs ((top, bottom), (left, right)); got {padding!r}")
    _require(min(min(p) for p in pads) >= 0, f"padding must be non-negative, got {padding!r}")
    return pads  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: IntPair = 0,
                     dilation: int = 1) -> int:
    """Output length along one axis: the book's ``floor((n - k + p + s) / s)``.

    ``padding`` is per side (an int) or ``(before, after)``; ``p`` above is their sum. A
    dilated kernel spans ``dilation * (kernel - 1) + 1`` inputs.
    """
    for name, value in (("size", size), ("kernel", kernel), ("stride", stride),
                        ("dilation", dilation)):
        _require(isinstance(value, Integral) and value > 0,
                 f"{name} must be a positive int, got {value!r}")
    before, after = _pair(padding, "padding")
    _require(min(before, after) >= 0, f"padding must be non-negative, got {padding!r}")
    span = dilation * (kernel - 1) + 1
    padded = size + before + after
    _require(span <= padded, f"kernel spans {span} but the padded input is only {padded} long "
                             f"(size {size}, padding {padding!r})")
    return (padded - span + stride) // stride


# --------------------------------------------------------------------------------------------
# The book's references (d2l 7.2, 7.4, 7.5)
# --------------------------------------------------------------------------------------------

def _windows(X: jax.Array, h: int, w: int) -> jax.Array:
    """All ``h x w`` windows of ``X (..., H, W)`` at stride 1: ``(..., H-h+1, W-w+1, h, w)``.

    ``windows[..., i, j, :, :] == X[..., i:i+h, j:j+w]`` -- one gather, no Python loop.
    """
    rows = jnp.arange(X.shape[-2] - h + 1)[:, None] + jnp.arange(h)   # (H', h)
    cols = jnp.arange(X.shape[-1] - w + 1)[:, None] + jnp.arange(w)   # (W', w)
    return X[..., rows[:, None, :, None], cols[None, :, None, :]]


def corr2d(X: jax.Array, K: jax.Array) -> jax.Array:
    """2-D cross-correlation: ``Y[i, j] = sum(X[i:i+kh, j:j+kw] * K)``.

    X: ``(h, w)``; K: ``(kh, kw)``, at least 1x1; returns ``(h - kh + 1, w - kw + 1)``. Integer
    inputs are computed in at least int32.
    """
    X, K = jnp.asarray(X), jnp.asarray(K)
    _require(X.ndim == 2 and K.ndim == 2,
             f"corr2d expects X (h, w) and K (kh, kw); got X {X.shape} and K {K.shape}")
    _require(min(K.shape) > 0, f"corr2d: the kernel must be at least 1x1; got K {K.shape}")
    _require(K.shape[0] <= X.shape[0] and K.shape[1] <= X.shape[1],
             f"corr2d: kernel {K.shape} is larger than the input {X.shape}")
    dtype = jnp.result_type(X, K)
    if not jnp.issubdtype(dtype, jnp.inexact):
        # Integers (and booleans) multiply and sum in at least int32: uint8 products wrap.
        dtype = jnp.promote_types(dtype, jnp.int32)
    X, K = X.astype(dtype), K.astype(dtype)
    return (_windows(X, *K.shape) * K).sum(axis=(-2, -1))


def corr2d_multi_in(X: jax.Array, K: jax.Array) -> jax.Array:
    """Cross-correlation summed over input channels: X ``(c_i, h, w)``, K ``(c_i, kh, kw)``
    -> ``(h', w')``."""
    X, K = jnp.asarray(X), jnp.asarray(K)
    _require(X.ndim == 3 and K.ndim == 3 and X.shape[0] == K.shape[0],
             "corr2d_multi_in expects X (c_i, h, w) and K (c_i, kh, kw) with the same c_i; "
             f"got X {X.shape} and K {K.shape}")
    return jax.vmap(corr2d)(X, K).sum(axis=0)


def corr2d_multi_in_out(X: jax.Array, K: jax.Array) -> jax.Array:
    """One multi-input correlation per output channel: X ``(c_i, h, w)``,
    K ``(c_o, c_i, kh, kw)`` -> ``(c_o, h', w')``."""
    X, K = jnp.asarray(X), jnp.asarray(K)
    _require(X.ndim == 3 and K.ndim == 4 and X.shape[0] == K.shape[1],
             "corr2d_multi_in_out expects X (c_i, h, w) and K (c_o, c_i, kh, kw) with the same "
             f"c_i; got X {X.shape} and K {K.shape}")
    return jax.vmap(corr2d_multi_in, in_axes=(None, 0))(X, K)


def corr2d_multi_in_out_1x1(X: jax.Array, K: jax.Array) -> jax.Array:
    """The 1x1 convolution as a matrix product: X ``(c_i, h, w)``, K ``(c_o, c_i, 1, 1)``
    -> ``(c_o, h, w)``; each pixel's channels times ``K (c_o, c_i)``."""
    X, K = jnp.asarray(X), jnp.asarray(K)
    _require(X.ndim == 3 and K.ndim == 4 and K.shape[1] == X.shape[0] and K.shape[2:] == (1, 1),
             "corr2d_multi_in_out_1x1 expects X (c_i, h, w) and K (c_o, c_i, 1, 1); "
             f"got X {X.shape} and K {K.shape}")
    c_i, h, w = X.shape
    Y = K.reshape(K.shape[0], c_i) @ X.reshape(c_i, h * w)
    return Y.reshape(K.shape[0], h, w)


def pool2d(X: jax.Array, pool_size: IntPair, mode: Literal["max", "avg"] = "max") -> jax.Array:
    """The book's pooling: max or mean of each ``pool_size`` window, stride 1, no padding.

    X: ``(h, w)``; returns ``(h - p_h + 1, w - p_w + 1)``.
    """
    X = jnp.asarray(X)
    p_h, p_w = _positive_pair(pool_size, "pool_size")
    _require(X.ndim == 2, f"pool2d expects X (h, w); got {X.shape}")
    _require(p_h <= X.shape[0] and p_w <= X.shape[1],
             f"pool2d: window {(p_h, p_w)} is larger than the input {X.shape}")
    windows = _windows(X, p_h, p_w)
    if mode == "max":
        return windows.max(axis=(-2, -1))
    if mode == "avg":
        return windows.mean(axis=(-2, -1))
    raise ValueError(f"pool2d: mode must be 'max' or 'avg', got {mode!r}")


# --------------------------------------------------------------------------------------------
# Production ops: NHWC images, HWIO kernels, through jax.lax
# --------------------------------------------------------------------------------------------

def _require_nhwc(x: jax.Array, op: str) -> None:
    _require(x.ndim == 4, f"{op} expects x in NHWC layout (batch, height, width, channels); "
                          f"got shape {x.shape}")


def conv2d(x: jax.Array, w: jax.Array, b: jax.Array | None = None, *, stride: IntPair = 1,
           padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> jax.Array:
    """2-D convolution (cross-correlation, as the book and every framework define it).

    x: ``(N, H, W, C_in)``; w: ``(kh, kw, C_in // groups, C_out)``; b: ``(C_out,)`` or None.
    ``padding``: ``'SAME'``, ``'VALID'``, an int, ``(p_h, p_w)`` or
    ``((top, bottom), (left, right))``. ``groups`` is the number of groups: each sees
    ``C_in // groups`` input channels and makes ``C_out // groups`` outputs.
    Returns ``(N, H', W', C_out)`` with ``H' = conv_output_size(H, kh, s_h, p_h, d_h)``, in
    x's dtype (the bias is cast to it); outputs beyond ``MAX_OUTPUT_ELEMENTS`` are refused.
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    _require_nhwc(x, "conv2d")
    _require(w.ndim == 4, f"conv2d expects w in HWIO layout (kh, kw, C_in // groups, C_out); "
                          f"got shape {w.shape}")
    _require(min(w.shape[:2]) > 0, f"conv2d: the kernel must be at least 1x1; got w (HWIO) "
                                   f"{w.shape}")
    _require_float(x, "x", "conv2d")
    _require_float(w, "w", "conv2d")
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d: x and w must have one dtype; got x {x.dtype} and w {w.dtype} "
                        f"(cast one, e.g. w.astype(x.dtype))")
    strides = _positive_pair(stride, "stride")
    dilations = _positive_pair(dilation, "dilation")
    _require(isinstance(groups, int) and groups > 0,
             f"groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[-1], w.shape[-1]
    _require(c_in % groups == 0 and c_out % groups == 0,
             f"conv2d: groups={groups} must divide both the input channels ({c_in}) and the "
             f"output channels ({c_out}); x {x.shape}, w {w.shape}")
    _require(w.shape[2] * groups == c_in,
             f"conv2d: x (NHWC) {x.shape} has {c_in} channels, so w (HWIO) needs "
             f"{c_in // groups} input channels per group (groups={groups}); got w {w.shape}")
    spans = [d * (k - 1) + 1 for d, k in zip(dilations, w.shape[:2], strict=True)]
    if isinstance(padding, str):
        _require(padding.upper() in ("SAME", "VALID"),
                 f"padding must be 'SAME', 'VALID', an int or pairs; got {padding!r}")
        pads = lax.padtype_to_pads(x.shape[1:3], spans, strides, padding.upper())
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    else:
        pads = _padding_pairs(padding)
    out_hw = []
    for axis, name in ((0, "height"), (1, "width")):
        span, padded = spans[axis], x.shape[1 + axis] + sum(pads[axis])
        _require(span <= padded,
                 f"conv2d: the kernel spans {span} along {name} but the padded input has "
                 f"{padded}; x (NHWC) {x.shape}, w (HWIO) {w.shape}, padding {padding!r}")
        out_hw.append((padded - span) // strides[axis] + 1)
    elements = x.shape[0] * out_hw[0] * out_hw[1] * c_out
    _require(elements <= MAX_OUTPUT_ELEMENTS,
             f"conv2d: the output would be {(x.shape[0], *out_hw, c_out)}, {elements:,} "
             f"elements; at most {MAX_OUTPUT_ELEMENTS:,} are allowed (padding {padding!r}, "
             f"stride {stride!r})")
    y = lax.conv_general_dilated(
        x, w, window_strides=strides, padding=pads, rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    if b is not None:
        b = jnp.asarray(b)
        _require(b.shape == (c_out,), f"conv2d: bias must have shape ({c_out},); got {b.shape}")
        y = y + b.astype(y.dtype)          # the bias in the compute dtype, as nnx.Conv's
    return y


def _pool_geometry(x: jax.Array, kernel_size: IntPair, stride: IntPair | None,
                   padding: IntPair, op: str):
    _require_nhwc(x, op)
    _require_float(x, "x", op)
    kernel = _positive_pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else _positive_pair(stride, "stride")
    pads = _pair(padding, "padding")
    _require(min(pads) >= 0 and all(2 * p <= k for p, k in zip(pads, kernel, strict=True)),
             f"{op}: padding must be between 0 and half the kernel (as in PyTorch); got "
             f"padding {padding!r} for kernel {kernel}")
    for axis, name in ((0, "height"), (1, "width")):
        padded = x.shape[1 + axis] + 2 * pads[axis]
        _require(kernel[axis] <= padded,
                 f"{op}: window {kernel} is larger than the padded input along {name} "
                 f"({padded}); x (NHWC) {x.shape}, padding {padding!r}")
    window = (1, *kernel, 1)
    window_strides = (1, *strides, 1)
    padding_config = ((0, 0), (pads[0], pads[0]), (pads[1], pads[1]), (0, 0))
    return window, window_strides, padding_config


def _tiles(x: jax.Array, window, strides, pads) -> jax.Array | None:
    """Non-overlapping, unpadded windows as ``(N, H', kh, W', kw, C)`` by a reshape, or None.

    When the stride equals the kernel and there is no padding (LeNet's and VGG's 2x2 pools),
    pooling is a reduction over a reshape, which XLA differentiates with cheap elementwise
    ops instead of reduce_window's select-and-scatter. Rows and columns past the last full
    window are dropped, as PyTorch's floor mode does.
    """
    if window != strides or any(p != (0, 0) for p in pads):
        return None
    (_, kh, kw, _), (n, h, w, c) = window, x.shape
    return x[:, :h - h % kh, :w - w % kw].reshape(n, h // kh, kh, w // kw, kw, c)


def max_pool2d(x: jax.Array, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0) -> jax.Array:
    """Max pooling over each channel, as ``torch.nn.MaxPool2d``: stride defaults to the kernel
    size, padding (per side) is ``-inf``. x: ``(N, H, W, C)`` -> ``(N, H', W', C)``. (Where
    several inputs tie for the maximum, the gradient is shared among them on the reshape
    path, not given to the first as PyTorch does.)"""
    window, strides, pads = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d")
    tiles = _tiles(x, window, strides, pads)
    if tiles is not None:
        return tiles.max(axis=(2, 4))
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, window, strides, pads)


def avg_pool2d(x: jax.Array, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0) -> jax.Array:
    """Average pooling, as ``torch.nn.AvgPool2d`` with its default ``count_include_pad=True``:
    padded zeros count in the mean. x: ``(N, H, W, C)`` -> ``(N, H', W', C)``."""
    window, strides, pads = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d")
    tiles = _tiles(x, window, strides, pads)
    if tiles is not None:
        return tiles.mean(axis=(2, 4))
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, strides, pads)
    return total / (window[1] * window[2])


# --------------------------------------------------------------------------------------------
# Batch normalization from scratch (d2l 8.5.2)
# --------------------------------------------------------------------------------------------

def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, moving_mean: jax.Array,
               moving_var: jax.Array, *, train: bool, eps: float = 1e-5,
               momentum: float = 0.1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The book's ``batch_norm`` on NHWC ``(N, H, W, C)`` or dense ``(N, C)`` input.

    Train: normalise with the batch's mean and (biased) variance over every axis but the
    channels -- (0, 1, 2) for NHWC, 0 for dense -- and update the moving averages in PyTorch's
    convention, ``moving = (1 - momentum) * moving + momentum * batch`` (Flax's
    ``momentum`` is ``1 - momentum``). Eval: normalise with the moving averages, which come
    back unchanged. ``scale``, ``bias`` and the moving statistics are ``(C,)``.
    Returns ``(y, moving_mean, moving_var)``, ``y`` shaped as ``x``; the moving statistics
    carry no gradient (the book's ``.data``).
    """
    x = jnp.asarray(x)
    _require(x.ndim in (2, 4), f"batch_norm expects x in NHWC (N, H, W, C) or dense (N, C) "
                               f"layout; got shape {x.shape}")
    _require_float(x, "x", "batch_norm")
    channels = (x.shape[-1],)
    for name, value in (("scale", scale), ("bias", bias), ("moving_mean", moving_mean),
                        ("moving_var", moving_var)):
        _require(jnp.shape(value) == channels,
                 f"batch_norm: {name} must have shape {channels} for x {x.shape}; "
                 f"got {jnp.shape(value)}")
    if train:
        y, mean, var = batch_norm_train(x, scale, bias, eps)
        moving_mean = lax.stop_gradient((1.0 - momentum) * moving_mean + momentum * mean)
        moving_var = lax.stop_gradient((1.0 - momentum) * moving_var + momentum * var)
        return y, moving_mean, moving_var
    y = scale * (x - moving_mean) / jnp.sqrt(moving_var + eps) + bias
    return y, moving_mean, moving_var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm over every axis but the last (channels): ``x`` ``(..., C)``,
    ``scale`` and ``bias`` ``(C,)``; returns ``(y, mean, var)``, ``y`` float32 (at least)
    shaped as ``x``, and the batch's mean and biased variance ``(C,)``.

    The statistics take one pass over ``x``: the sums of ``x - s`` and its square, ``s`` one
    example's values per channel (a shift inside the data, so that near-constant channels do
    not cancel as ``mean(x**2) - mean**2`` does). The gradient is the standard two-reduction
    one (sums of ``dy`` and ``dy * x_hat``), not autodiff's longer chain.
    """
    return _batch_norm_forward(x, scale, bias, eps)[0]


def _statistics_axes(x: jax.Array) -> tuple[tuple[int, ...], int]:
    """The axes BatchNorm reduces over (all but the channels) and how many values each
    channel's statistics take (at least 1)."""
    return tuple(range(x.ndim - 1)), max(x.size // max(x.shape[-1], 1), 1)


def _batch_norm_forward(x, scale, bias, eps):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes, n = _statistics_axes(x)
    shift = lax.stop_gradient(x32[(0,) * (x.ndim - 1)])
    d = x32 - shift
    mean_d = d.sum(axes) / n
    var = jnp.maximum((d * d).sum(axes) / n - mean_d * mean_d, 0.0)
    rstd = lax.rsqrt(var + eps)
    # Centred as (x - s) - mean(x - s), not x - mean: the mean rounded to float32 would be off
    # by up to half its last place, a whole standard deviation for a near-constant channel.
    y = (d - mean_d) * (scale * rstd) + bias
    return (y, shift + mean_d, var), (x, shift, mean_d, rstd, scale)


def _batch_norm_backward(eps, res, cotangents):
    x, shift, mean_d, rstd, scale = res
    dy, dmean, dvar = cotangents
    axes, n = _statistics_axes(x)
    centred = (x.astype(shift.dtype) - shift) - mean_d
    x_hat = centred * rstd
    dbias, dscale = dy.sum(axes), (dy * x_hat).sum(axes)
    dx = ((scale * rstd / n) * (n * dy - dbias - x_hat * dscale)
          + (dmean + 2.0 * dvar * centred) / n)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)
