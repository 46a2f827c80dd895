"""jaxcnn.ops: the book's values, references against the lax ops, gradients and errors."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx
from jax import lax
from jax.test_util import check_grads

from jaxcnn import layers, ops

X3 = jnp.arange(9.0).reshape(3, 3)
K2 = jnp.array([[0.0, 1.0], [2.0, 3.0]])
X16 = jnp.arange(16.0).reshape(1, 4, 4, 1)


def book_multi_channel():
    X = jnp.stack([X3, X3 + 1])
    K = jnp.stack([K2, K2 + 1])
    return X, K


class BookValuesTest(chex.TestCase):
    """Every value d2l 7.2-7.5 prints, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_corr2d(self):
        chex.assert_trees_all_close(self.variant(ops.corr2d)(X3, K2),
                                    jnp.array([[19.0, 25.0], [37.0, 43.0]]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_edge_detection(self):
        X = jnp.ones((6, 8)).at[:, 2:6].set(0.0)
        K = jnp.array([[1.0, -1.0]])
        corr = self.variant(ops.corr2d)
        edges = jnp.tile(jnp.array([0.0, 1, 0, 0, 0, -1, 0]), (6, 1))
        chex.assert_trees_all_close(corr(X, K), edges)
        chex.assert_trees_all_close(corr(X.T, K), jnp.zeros((8, 5)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_multi_in(self):
        X, K = book_multi_channel()
        chex.assert_trees_all_close(self.variant(ops.corr2d_multi_in)(X, K),
                                    jnp.array([[56.0, 72.0], [104.0, 120.0]]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_multi_in_out(self):
        X, K = book_multi_channel()
        K3 = jnp.stack([K, K + 1, K + 2])
        chex.assert_shape(K3, (3, 2, 2, 2))
        expected = jnp.array([[[56.0, 72], [104, 120]], [[76, 100], [148, 172]],
                              [[96, 128], [192, 224]]])
        chex.assert_trees_all_close(self.variant(ops.corr2d_multi_in_out)(X, K3), expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_1x1_is_a_matmul(self):
        kx, kk = jax.random.split(jax.random.key(0))
        X, K = jax.random.normal(kx, (3, 3, 3)), jax.random.normal(kk, (2, 3, 1, 1))
        chex.assert_trees_all_close(self.variant(ops.corr2d_multi_in_out_1x1)(X, K),
                                    ops.corr2d_multi_in_out(X, K), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pool2d(self):
        pool = self.variant(functools.partial(ops.pool2d, pool_size=(2, 2)))
        chex.assert_trees_all_close(pool(X3), jnp.array([[4.0, 5.0], [7.0, 8.0]]))
        avg = self.variant(functools.partial(ops.pool2d, pool_size=(2, 2), mode="avg"))
        chex.assert_trees_all_close(avg(X3), jnp.array([[2.0, 3.0], [5.0, 6.0]]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_max_pool2d_padding_and_stride(self):
        pool = lambda **kw: self.variant(functools.partial(ops.max_pool2d, **kw))(X16)[0, :, :, 0]
        chex.assert_trees_all_close(pool(kernel_size=3), jnp.array([[10.0]]))
        expected = jnp.array([[5.0, 7.0], [13.0, 15.0]])
        chex.assert_trees_all_close(pool(kernel_size=3, padding=1, stride=2), expected)
        chex.assert_trees_all_close(pool(kernel_size=(2, 3), stride=(2, 3), padding=(0, 1)),
                                    expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_max_pool2d_channels(self):
        X = jnp.concatenate([X16, X16 + 1], axis=-1)
        Y = self.variant(functools.partial(ops.max_pool2d, kernel_size=3, padding=1, stride=2))(X)
        chex.assert_trees_all_close(jnp.moveaxis(Y[0], -1, 0),
                                    jnp.array([[[5.0, 7], [13, 15]], [[6, 8], [14, 16]]]))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        ((3, 3), 1, 1, (8, 8)),
        ((5, 3), (2, 1), 1, (8, 8)),
        ((3, 3), 1, 2, (4, 4)),
        ((3, 5), (0, 1), (3, 4), (2, 2)),
    )
    def test_padding_and_stride_shapes(self, kernel, padding, stride, expected):
        conv = self.variant(functools.partial(ops.conv2d, padding=padding, stride=stride))
        y = conv(jnp.ones((1, 8, 8, 1)), jnp.ones((*kernel, 1, 1)))
        chex.assert_shape(y, (1, *expected, 1))
        pads = (padding, padding) if isinstance(padding, int) else padding
        strides = (stride, stride) if isinstance(stride, int) else stride
        got = tuple(ops.conv_output_size(8, k, s, p)
                    for k, s, p in zip(kernel, strides, pads, strict=True))
        assert got == expected


# ----------------------------------------------------------------------------------------------
# References composed from the book's functions, for any stride, padding, dilation and groups
# ----------------------------------------------------------------------------------------------

def reference_conv2d(x, w, b, stride, padding, dilation, groups):
    """conv2d built only from corr2d_multi_in_out: pad with zeros, dilate the kernel by
    inserting zeros, correlate each group, subsample by the stride. NHWC / HWIO in and out."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    kh, kw, _, c_out = w.shape
    dilated = jnp.zeros((dh * (kh - 1) + 1, dw * (kw - 1) + 1, *w.shape[2:]))
    dilated = dilated.at[::dh, ::dw].set(w)
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    outputs = []
    for image in xp:
        X = jnp.moveaxis(image, -1, 0)                                  # (c_in, H, W)
        K = jnp.transpose(dilated, (3, 2, 0, 1))                        # (c_out, c_in/g, kh, kw)
        per_group = [ops.corr2d_multi_in_out(Xg, Kg) for Xg, Kg in
                     zip(jnp.split(X, groups), jnp.split(K, groups), strict=True)]
        Y = jnp.concatenate(per_group)[:, ::sh, ::sw]
        outputs.append(jnp.moveaxis(Y, 0, -1))
    y = jnp.stack(outputs)
    return y if b is None else y + b


def reference_pool(x, kernel, stride, padding, mode):
    """max/avg pooling built from pool2d: pad (-inf for max, 0 for avg), pool, subsample."""
    fill = -jnp.inf if mode == "max" else 0.0
    xp = jnp.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)), constant_values=fill)
    pooled = jax.vmap(jax.vmap(lambda X: ops.pool2d(X, kernel, mode), in_axes=-1, out_axes=-1))(xp)
    return pooled[:, ::stride[0], ::stride[1]]


# The references as one program each (one compile a shape instead of one a primitive and shape),
# for the property tests' many shapes.
jitted_reference_conv2d = jax.jit(reference_conv2d, static_argnums=(2, 3, 4, 5, 6))
jitted_reference_pool = jax.jit(reference_pool, static_argnums=(1, 2, 3, 4))

CONV_GRID = [
    # (H, W, kernel, stride, padding, dilation, groups, c_in, c_out)
    (7, 7, (3, 3), (1, 1), (0, 0), (1, 1), 1, 3, 4),
    (8, 9, (3, 2), (2, 1), (1, 0), (1, 1), 1, 2, 3),
    (9, 8, (3, 3), (2, 3), (1, 2), (2, 1), 1, 1, 2),
    (6, 6, (1, 1), (1, 1), (0, 0), (1, 1), 2, 4, 6),
    (10, 7, (3, 3), (3, 2), (2, 1), (2, 2), 4, 4, 8),
    (5, 5, (5, 5), (1, 1), (2, 2), (1, 1), 3, 6, 3),
]


@pytest.mark.parametrize("H, W, kernel, stride, padding, dilation, groups, c_in, c_out", CONV_GRID)
def test_conv2d_matches_reference(H, W, kernel, stride, padding, dilation, groups, c_in, c_out):
    rng = np.random.default_rng(H * W + c_out)
    x = rng.standard_normal((2, H, W, c_in), dtype=np.float32)
    w = rng.standard_normal((*kernel, c_in // groups, c_out), dtype=np.float32)
    b = rng.standard_normal(c_out, dtype=np.float32)
    got = ops.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    want = jitted_reference_conv2d(x, w, None, stride, padding, dilation, groups) + b
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)
    expected_hw = tuple(ops.conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                        zip((H, W), kernel, stride, padding, dilation, strict=True))
    chex.assert_shape(got, (2, *expected_hw, c_out))


def test_conv2d_same_and_per_side_padding():
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, (1, 6, 7, 2)), jax.random.normal(kw, (3, 3, 2, 3))
    chex.assert_trees_all_close(ops.conv2d(x, w, padding="SAME"), ops.conv2d(x, w, padding=1))
    chex.assert_trees_all_close(ops.conv2d(x, w, padding="VALID"), ops.conv2d(x, w, padding=0))
    per_side = ops.conv2d(x, w, padding=((0, 2), (1, 0)))
    manual = ops.conv2d(jnp.pad(x, ((0, 0), (0, 2), (1, 0), (0, 0))), w)
    chex.assert_trees_all_close(per_side, manual)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("H, W, kernel, stride, padding", [
    (4, 4, (2, 2), (2, 2), (0, 0)),
    (5, 7, (3, 3), (2, 2), (1, 1)),
    (6, 5, (2, 3), (1, 2), (1, 1)),
    (9, 9, (3, 2), (3, 1), (0, 1)),
    (7, 6, (4, 4), (1, 3), (2, 2)),
])
def test_pools_match_reference(mode, H, W, kernel, stride, padding):
    x = jax.random.normal(jax.random.key(H * 10 + W), (2, H, W, 3))
    pool = ops.max_pool2d if mode == "max" else ops.avg_pool2d
    chex.assert_trees_all_close(pool(x, kernel, stride, padding),
                                reference_pool(x, kernel, stride, padding, mode), atol=1e-6)


def test_pool_stride_defaults_to_kernel():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    chex.assert_trees_all_close(ops.max_pool2d(x, 3), ops.max_pool2d(x, 3, stride=3))
    chex.assert_trees_all_close(ops.avg_pool2d(x, 2), ops.avg_pool2d(x, 2, stride=2))


def test_avg_pool_counts_padded_zeros():
    # PyTorch's count_include_pad=True: the corner window of ones holds 4 of 9 real pixels.
    y = ops.avg_pool2d(jnp.ones((1, 4, 4, 1)), 3, stride=1, padding=1)
    assert float(y[0, 0, 0, 0]) == pytest.approx(4 / 9)
    assert float(y[0, 1, 1, 0]) == pytest.approx(1.0)


def test_multi_in_out_matches_conv2d_layouts():
    kx, kk = jax.random.split(jax.random.key(3))
    X, K = jax.random.normal(kx, (3, 6, 5)), jax.random.normal(kk, (4, 3, 2, 3))
    nhwc = ops.conv2d(jnp.moveaxis(X, 0, -1)[None], jnp.transpose(K, (2, 3, 1, 0)))
    chex.assert_trees_all_close(jnp.moveaxis(nhwc[0], -1, 0), ops.corr2d_multi_in_out(X, K),
                                atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------

def test_grads_conv2d():
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    x, w, b = (jax.random.normal(kx, (1, 5, 5, 2)), jax.random.normal(kw, (3, 3, 1, 4)),
               jax.random.normal(kb, (4,)))
    f = lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1, groups=2)
    check_grads(f, (x, w, b), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_grads_corr2d():
    kx, kk = jax.random.split(jax.random.key(1))
    check_grads(ops.corr2d, (jax.random.normal(kx, (5, 6)), jax.random.normal(kk, (2, 3))),
                order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.avg_pool2d])
def test_grads_pools(pool):
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 2))
    check_grads(lambda x: pool(x, 3, 2, 1), (x,), order=1, modes=("fwd", "rev"),
                atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# Errors name the layout and the shapes received
# ----------------------------------------------------------------------------------------------

def _ones(*shape):
    return jnp.ones(shape)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.conv2d(_ones(5, 5, 3), _ones(3, 3, 3, 4)), r"NHWC.*\(5, 5, 3\)"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 3), _ones(3, 3, 3)), r"HWIO.*\(3, 3, 3\)"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 3), _ones(3, 3, 2, 4)),
     r"\(1, 5, 5, 3\) has 3 channels.*\(3, 3, 2, 4\)"),
    (lambda: ops.conv2d(_ones(1, 2, 2, 1), _ones(3, 3, 1, 1)), r"spans 3.*\(1, 2, 2, 1\)"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 3), _ones(3, 3, 1, 4), groups=3), r"groups=3.*4"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 4), _ones(3, 3, 1, 3), groups=4), r"groups=4"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), stride=0), r"stride.*positive"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), dilation=(1, -1)),
     r"dilation.*positive"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), padding=-1), r"non-negative"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), padding="FULL"), r"SAME"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 2), _ones(3, 3, 2, 2), _ones(3)), r"bias.*\(2,\)"),
    (lambda: ops.max_pool2d(_ones(4, 4), 2), r"NHWC.*\(4, 4\)"),
    (lambda: ops.max_pool2d(_ones(1, 2, 2, 1), 3), r"window.*\(1, 2, 2, 1\)"),
    (lambda: ops.avg_pool2d(_ones(1, 4, 4, 1), 2, padding=2), r"half the kernel"),
    (lambda: ops.avg_pool2d(_ones(1, 4, 4, 1), 2, stride=0), r"stride.*positive"),
    (lambda: ops.corr2d(_ones(3, 3, 1), _ones(2, 2)), r"X \(h, w\).*\(3, 3, 1\)"),
    (lambda: ops.corr2d(_ones(2, 2), _ones(3, 3)), r"kernel \(3, 3\).*\(2, 2\)"),
    (lambda: ops.corr2d_multi_in(_ones(2, 3, 3), _ones(3, 2, 2)), r"\(2, 3, 3\).*\(3, 2, 2\)"),
    (lambda: ops.corr2d_multi_in_out(_ones(2, 3, 3), _ones(2, 2, 2)), r"\(2, 2, 2\)"),
    (lambda: ops.corr2d_multi_in_out(_ones(2, 5, 5), _ones(4, 3, 2, 2)),
     r"^corr2d_multi_in_out expects .* got X \(2, 5, 5\) and K \(4, 3, 2, 2\)$"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), stride=1.5),
     r"stride must be an int or a pair of ints \(h, w\), got 1.5"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), stride="22"),
     r"stride must be an int or a pair of ints \(h, w\), got '22'"),
    (lambda: ops.corr2d_multi_in_out_1x1(_ones(3, 3, 3), _ones(2, 3, 2, 2)), r"\(2, 3, 2, 2\)"),
    (lambda: ops.pool2d(X3, 2, mode="median"), r"'max' or 'avg'"),
    (lambda: ops.pool2d(X3, 4), r"window \(4, 4\).*\(3, 3\)"),
    (lambda: ops.conv_output_size(4, 7), r"spans 7"),
    (lambda: ops.conv_output_size(4, 3, stride=0), r"stride"),
    (lambda: ops.corr2d(_ones(4, 4), _ones(0, 1)), r"at least 1x1; got K \(0, 1\)"),
    (lambda: ops.conv2d(_ones(1, 4, 4, 1), _ones(0, 3, 1, 1)), r"at least 1x1.*\(0, 3, 1, 1\)"),
    (lambda: ops.conv2d(_ones(1, 5, 5, 1), _ones(3, 3, 1, 1), padding=10**6),
     r"output would be \(1, 2000003, 2000003, 1\), 4,000,012,000,009 elements; at most "
     r"2,147,483,648"),
])
def test_bad_shapes_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: ops.conv2d(jnp.ones((1, 5, 5, 1), jnp.int32), _ones(3, 3, 1, 1)),
    lambda: ops.conv2d(_ones(1, 5, 5, 1), jnp.ones((3, 3, 1, 1), jnp.int32)),
    lambda: ops.max_pool2d(jnp.ones((1, 4, 4, 1), jnp.uint8), 2),
    lambda: ops.avg_pool2d(jnp.ones((1, 4, 4, 1), jnp.int32), 2),
])
def test_non_float_input_raises_type_error(call):
    with pytest.raises(TypeError, match=r"floating-point.*int|floating-point.*uint8"):
        call()


@pytest.mark.parametrize("stride, dilation", [(1, 2), (2, 2), (2, 3), ((1, 2), (3, 1))])
def test_same_padding_spans_the_dilated_kernel(stride, dilation):
    x = jax.random.normal(jax.random.key(0), (1, 10, 11, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    s, d = ops._pair(stride, "stride"), ops._pair(dilation, "dilation")
    expected = lax.conv_general_dilated(x, w, s, "SAME", rhs_dilation=d,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = ops.conv2d(x, w, padding="SAME", stride=stride, dilation=dilation)
    assert got.shape[1:3] == (-(-10 // s[0]), -(-11 // s[1]))    # ceil(H / stride)
    chex.assert_trees_all_close(got, expected, atol=1e-5)


def test_numpy_integers_work_as_sizes_and_padding():
    x, w = _ones(1, 6, 6, 1), _ones(3, 3, 1, 1)
    np.testing.assert_array_equal(ops.conv2d(x, w, padding=np.int64(1)),
                                  ops.conv2d(x, w, padding=1))
    assert ops.conv_output_size(np.int64(28), 5) == 24


def test_strides_may_be_numpy_integers_lists_or_tuples():
    x, w = _ones(1, 6, 6, 1), _ones(3, 3, 1, 1)
    expected = ops.conv2d(x, w, stride=2)
    for stride in (np.int64(2), [2, 2], (np.int32(2), 2)):
        np.testing.assert_array_equal(ops.conv2d(x, w, stride=stride), expected)


def test_integer_correlation_does_not_wrap():
    """uint8 products wrap at 256: 200 * 2 summed over a 2x2 window is 1600, not 576."""
    X, K = jnp.full((4, 4), 200, jnp.uint8), jnp.full((2, 2), 2, jnp.uint8)
    np.testing.assert_array_equal(ops.corr2d(X, K), np.full((3, 3), 1600))
    np.testing.assert_array_equal(ops.corr2d_multi_in(jnp.stack([X, X]), jnp.stack([K, K])),
                                  np.full((3, 3), 3200))
    np.testing.assert_array_equal(ops.pool2d(X, 2, "avg"), np.full((3, 3), 200.0))
    np.testing.assert_array_equal(ops.pool2d(X, 2, "max"), np.full((3, 3), 200))


def test_conv2d_adds_the_bias_in_the_compute_dtype():
    x, w = jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 4), jnp.bfloat16)
    y = ops.conv2d(x, w, jnp.arange(4.0, dtype=jnp.float32))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y[0, 0, 0], np.float32), [18, 19, 20, 21])


def test_mixed_dtypes_in_conv2d_raise_type_error():
    with pytest.raises(TypeError, match="x and w must have one dtype; got x bfloat16 and w "
                                        "float32"):
        ops.conv2d(jnp.ones((1, 5, 5, 1), jnp.bfloat16), _ones(3, 3, 1, 1))


def test_conv_output_size_agrees_with_conv2d():
    for n, k, s, p, d in itertools.product((5, 8), (1, 3), (1, 2, 3), (0, 1), (1, 2)):
        if d * (k - 1) + 1 > n + 2 * p:
            continue
        y = ops.conv2d(jnp.ones((1, n, n, 1)), jnp.ones((k, k, 1, 1)), stride=s, padding=p,
                       dilation=d)
        assert y.shape[1] == ops.conv_output_size(n, k, s, p, d), (n, k, s, p, d)


# ----------------------------------------------------------------------------------------------
# The book's from-scratch Conv2D layer
# ----------------------------------------------------------------------------------------------

def test_scratch_conv2d_layer():
    layer = layers.Conv2D((1, 2), rngs=nnx.Rngs(0))
    assert layer.weight[...].shape == (1, 2) and layer.bias[...].shape == ()
    X = jax.random.normal(jax.random.key(0), (6, 8))
    layer.bias[...] = jnp.array(0.5)
    chex.assert_trees_all_close(layer(X), ops.corr2d(X, layer.weight[...]) + 0.5)
    grads = nnx.grad(lambda m: m(X).sum())(layer)
    chex.assert_tree_all_finite(grads)
    # d/d bias of a sum over the 6x7 output is the number of outputs.
    assert float(grads.bias[...]) == pytest.approx(42.0)
    assert np.all(np.asarray(layer.weight[...]) >= 0) and np.all(np.asarray(layer.weight[...]) < 1)


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.avg_pool2d])
def test_pools_differentiate_under_jit(pool):
    x = jax.random.normal(jax.random.key(4), (2, 6, 6, 3))
    jitted = jax.jit(jax.grad(lambda x: pool(x, 3, 2, 1).sum()))
    chex.assert_trees_all_close(jitted(x), jax.grad(lambda x: pool(x, 3, 2, 1).sum())(x))


@pytest.mark.parametrize("pool, reduce", [(ops.max_pool2d, lax.max), (ops.avg_pool2d, lax.add)])
@pytest.mark.parametrize("shape, kernel", [((2, 8, 8, 3), 2), ((2, 9, 7, 2), 2), ((1, 9, 9, 1), 3),
                                           ((2, 6, 8, 4), (2, 4))])
def test_reshape_pooling_equals_reduce_window(pool, reduce, shape, kernel):
    """The fast path (stride == kernel, no padding) against lax.reduce_window: values and, on
    inputs without ties, gradients."""
    x = jax.random.normal(jax.random.key(5), shape)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    init = -jnp.inf if reduce is lax.max else 0.0

    def slow(x):
        y = lax.reduce_window(x, init, reduce, (1, kh, kw, 1), (1, kh, kw, 1), "VALID")
        return y if reduce is lax.max else y / (kh * kw)

    chex.assert_trees_all_close(pool(x, kernel), slow(x), atol=1e-6)
    weights = jax.random.normal(jax.random.key(6), slow(x).shape)
    fast_grad = jax.jit(jax.grad(lambda x: (pool(x, kernel) * weights).sum()))(x)
    slow_grad = jax.jit(jax.grad(lambda x: (slow(x) * weights).sum()))(x)
    chex.assert_trees_all_close(fast_grad, slow_grad, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Any combination of arguments either raises ValueError/TypeError or matches the reference
# ----------------------------------------------------------------------------------------------

from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Mostly valid values, with the invalid ones (negative, zero, too large) mixed in.
size = st.sampled_from([-1, 0] + [1, 2, 3] * 6)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(0, 8), w=st.integers(0, 8), c_in=st.integers(1, 4), c_out=st.integers(1, 4),
       kh=size, kw=size, stride=size, padding=st.sampled_from([-1] + [0, 1, 2] * 4), dilation=size,
       groups=st.sampled_from([0, 1, 1, 1, 2, 2]))
def test_conv2d_raises_or_matches_reference(h, w, c_in, c_out, kh, kw, stride, padding,
                                            dilation, groups):
    # Validity from the shapes alone: an error exactly when the case is invalid.
    valid = (min(kh, kw, stride, dilation, groups) >= 1 and padding >= 0
             and c_in % groups == 0 and c_out % groups == 0
             and all(dilation * (k - 1) + 1 <= n + 2 * padding for n, k in ((h, kh), (w, kw))))
    # NumPy inputs: no random-number program is compiled for each shape hypothesis draws.
    rng = np.random.default_rng(h * 1000 + w * 100 + c_in * 10 + c_out)
    x = rng.standard_normal((1, h, w, c_in), dtype=np.float32)
    in_per_group = c_in // groups if groups > 0 else c_in
    kernel = np.full((max(kh, 0), max(kw, 0), in_per_group, c_out), 0.5, np.float32)
    conv = functools.partial(ops.conv2d, x, kernel, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if not valid:
        event("invalid: rejected")
        with pytest.raises(ValueError):
            conv()
        return
    event("valid: compared with the reference")
    want = jitted_reference_conv2d(x, kernel, None, (stride, stride), (padding, padding),
                                   (dilation, dilation), groups)
    chex.assert_trees_all_close(conv(), want, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(0, 8), w=st.integers(0, 8), k=size, stride=st.none() | size,
       padding=st.sampled_from([-1] + [0, 1, 2] * 4), mode=st.sampled_from(["max", "avg"]),
       integer=st.sampled_from([False, False, False, True]))
def test_pools_raise_or_match_reference(h, w, k, stride, padding, mode, integer):
    s = k if stride is None else stride
    # Validity from the shapes alone (PyTorch's rules): an error exactly when it is invalid.
    valid = (k >= 1 and s >= 1 and 0 <= padding and 2 * padding <= k
             and k <= min(h, w) + 2 * padding)
    x = np.random.default_rng(h * 10 + w).standard_normal((2, h, w, 2), dtype=np.float32)
    if integer:
        x = x.astype(np.int32)
    pool = functools.partial(ops.max_pool2d if mode == "max" else ops.avg_pool2d, x, k, stride,
                             padding)
    if integer or not valid:
        event("integer: rejected" if integer else "invalid: rejected")
        with pytest.raises(TypeError if integer else ValueError):
            pool()
        return
    event("valid: compared with the reference")
    chex.assert_trees_all_close(
        pool(), jitted_reference_pool(x, (k, k), (s, s), (padding, padding), mode), atol=1e-6)
