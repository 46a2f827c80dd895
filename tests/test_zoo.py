"""The rest of the CNN zoo (d2l 8.1, 8.3-8.5, 8.7, 8.8): the book's parameter counts and tables,
scratch BatchNorm against nnx.BatchNorm, gradients, minimum sizes and the CLI."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxcnn import cli, layers, models, ops, summary

NEW_MODELS = ["alexnet", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "densenet",
              "regnetx32"]


def abstract(name: str, **kwargs) -> nnx.Module:
    """The model with shapes but no values: building the real parameters of the big models
    compiles an initializer per shape, which the shape-only tests do not need."""
    return nnx.eval_shape(lambda: models.create(name, **kwargs))


def num_params(module: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def table(name: str, size: int | None = None) -> list[tuple[int, ...]]:
    size = size or models.spec(name).image_size
    rows = summary.layer_summary(abstract(name, image_size=size), (1, size, size, 1),
                                 print_fn=None)
    return [r.output_shape for r in rows[:-1]]


# Parameter counts of the book's PyTorch models (1 input channel, 10 classes).
@pytest.mark.parametrize("name, expected", [
    ("alexnet", 46_764_746),
    ("nin", 1_992_166),
    ("googlenet", 5_977_530),
    ("bn_lenet_scratch", 44_878),
    ("bn_lenet", 44_878),
    ("densenet", 758_226),
    ("regnetx32", 179_290),
])
def test_parameter_counts_match_the_book(name, expected):
    assert num_params(abstract(name)) == expected


def test_book_recipes():
    lrs = {name: models.spec(name).book_lr for name in NEW_MODELS}
    assert lrs == {"alexnet": 0.01, "nin": 0.05, "googlenet": 0.01, "bn_lenet_scratch": 0.1,
                   "bn_lenet": 0.1, "densenet": 0.01, "regnetx32": 0.05}


# ----------------------------------------------------------------------------------------------
# The book's layer tables, NCHW (1, C, H, W) written here as NHWC (1, H, W, C)
# ----------------------------------------------------------------------------------------------

def test_alexnet_table():
    assert table("alexnet") == [
        (1, 54, 54, 96), (1, 54, 54, 96), (1, 26, 26, 96),
        (1, 26, 26, 256), (1, 26, 26, 256), (1, 12, 12, 256),
        (1, 12, 12, 384), (1, 12, 12, 384), (1, 12, 12, 384), (1, 12, 12, 384),
        (1, 12, 12, 256), (1, 12, 12, 256), (1, 5, 5, 256),
        (1, 6400)] + [(1, 4096)] * 6 + [(1, 10)]


def test_nin_table():
    assert table("nin") == [(1, 54, 54, 96), (1, 26, 26, 96), (1, 26, 26, 256),
                            (1, 12, 12, 256), (1, 12, 12, 384), (1, 5, 5, 384), (1, 5, 5, 384),
                            (1, 5, 5, 10), (1, 1, 1, 10), (1, 10)]


def test_googlenet_table():
    assert table("googlenet") == [(1, 24, 24, 64), (1, 12, 12, 192), (1, 6, 6, 480),
                                  (1, 3, 3, 832), (1, 1024), (1, 10)]


def test_bn_lenet_table():
    shapes = table("bn_lenet")
    assert shapes[:9] == [(1, 24, 24, 6)] * 3 + [(1, 12, 12, 6)] + [(1, 8, 8, 16)] * 3 \
        + [(1, 4, 4, 16), (1, 256)]
    assert shapes[9:] == [(1, 120)] * 3 + [(1, 84)] * 3 + [(1, 10)]
    assert table("bn_lenet_scratch") == shapes


def test_densenet_table():
    assert table("densenet") == [(1, 24, 24, 64), (1, 24, 24, 192), (1, 12, 12, 96),
                                 (1, 12, 12, 224), (1, 6, 6, 112), (1, 6, 6, 240),
                                 (1, 3, 3, 120), (1, 3, 3, 248), (1, 10)]


def test_regnet_table_and_groups():
    assert table("regnetx32") == [(1, 48, 48, 32), (1, 24, 24, 32), (1, 12, 12, 80), (1, 10)]
    model = abstract("regnetx32")
    # A group width of 16: 32 / 16 = 2 groups in stage 1, 80 / 16 = 5 in stage 2.
    assert [block.conv2.feature_group_count for block in model.layers[1].layers] == [2] * 4
    assert [block.conv2.feature_group_count for block in model.layers[2].layers] == [5] * 6


# ----------------------------------------------------------------------------------------------
# BatchNorm from scratch against nnx.BatchNorm
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (16, 3)], ids=["nhwc", "dense"])
def test_scratch_batch_norm_matches_nnx(shape):
    keys = jax.random.split(jax.random.key(0), 5)
    x = 3 * jax.random.normal(keys[0], shape) + 1
    channels = shape[-1]
    reference = layers.batch_norm(channels, rngs=nnx.Rngs(0))         # momentum 0.9, eps 1e-5
    scratch = layers.BatchNorm(channels)                               # momentum 0.1, eps 1e-5
    # Non-trivial state.
    for name, key in zip(("scale", "bias", "mean", "var"), keys[1:], strict=True):
        value = jax.random.uniform(key, (channels,), minval=0.5, maxval=1.5)
        getattr(reference, name)[...] = value
        getattr(scratch, name)[...] = value

    # The function: train mode gives the output and the updated moving statistics.
    y, mean, var = ops.batch_norm(x, scratch.scale[...], scratch.bias[...], scratch.mean[...],
                                  scratch.var[...], train=True)
    reference.train()
    chex.assert_trees_all_close(y, reference(x), atol=1e-5)
    chex.assert_trees_all_close((mean, var), (reference.mean[...], reference.var[...]),
                                atol=1e-5)
    # The layer, switched by train() / eval() as nnx.BatchNorm.
    scratch.train()
    chex.assert_trees_all_close(scratch(x), y, atol=1e-5)
    chex.assert_trees_all_close(nnx.state(scratch), nnx.state(reference), atol=1e-5)
    scratch.eval()
    reference.eval()
    assert scratch.use_running_average
    chex.assert_trees_all_close(scratch(x), reference(x), atol=1e-5)
    chex.assert_trees_all_close(nnx.state(scratch), nnx.state(reference), atol=1e-5)
    y_eval, _, _ = ops.batch_norm(x, scratch.scale[...], scratch.bias[...], scratch.mean[...],
                                  scratch.var[...], train=False)
    chex.assert_trees_all_close(y_eval, scratch(x), atol=1e-6)
    assert nnx.view(scratch, use_running_average=False).use_running_average is False


@pytest.mark.parametrize("shape, dtype", [((8, 5, 5, 3), None), ((16, 3), None),
                                          ((8, 5, 5, 3), "bfloat16")],
                         ids=["nhwc", "dense", "nhwc-bfloat16"])
def test_one_pass_batch_norm_matches_nnx_in_values_statistics_and_gradients(shape, dtype):
    """layers.batch_norm's train mode (ops.batch_norm_train, a custom VJP) against
    nnx.BatchNorm's own two-pass code with the same state, in both modes."""
    keys = jax.random.split(jax.random.key(1), 6)
    x = 3 * jax.random.normal(keys[0], shape) + 1
    fused = layers.batch_norm(3, rngs=nnx.Rngs(0))
    plain = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                          rngs=nnx.Rngs(0))
    for name, key in zip(("scale", "bias", "mean", "var"), keys[1:5], strict=True):
        value = jax.random.uniform(key, (3,), minval=0.5, maxval=1.5)
        getattr(fused, name)[...] = value
        getattr(plain, name)[...] = value
    if dtype:
        fused.dtype = plain.dtype = jnp.dtype(dtype)
    cotangent = jax.random.normal(keys[5], shape)

    def loss(module, x):
        return jnp.vdot(module(x).astype(jnp.float32), cotangent)

    out = {}
    for name, module in (("fused", fused), ("plain", plain)):
        module.train()
        y = module(x.astype(dtype) if dtype else x)
        assert y.dtype == (jnp.dtype(dtype) if dtype else jnp.float32)
        out[name] = y.astype(jnp.float32), nnx.grad(loss, argnums=(0, 1))(module, x)
    tol = 2e-2 if dtype else 1e-5
    chex.assert_trees_all_close(out["fused"], out["plain"], atol=tol, rtol=tol)
    # Both calls updated the running statistics.
    chex.assert_trees_all_close(nnx.state(fused, nnx.BatchStat), nnx.state(plain, nnx.BatchStat),
                                rtol=1e-5)
    fused.eval()
    plain.eval()
    chex.assert_trees_all_close(fused(x), plain(x), atol=tol)


def test_one_pass_statistics_of_a_near_constant_channel_are_float64_s():
    """1000 + 1e-3 noise: float32's mean(x**2) - mean**2 would leave rounding ~1e-1 against a
    variance of 1e-6; the sums taken about one example's values keep it to float64's."""
    x = 1000 + 1e-3 * jax.random.normal(jax.random.key(3), (64, 4, 4, 2))
    y, mean, var = ops.batch_norm_train(x, jnp.ones(2), jnp.zeros(2), 0.0)
    x64 = np.asarray(x, np.float64).reshape(-1, 2)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2),
                               (x64 - x64.mean(0)) / x64.std(0), atol=2e-2)


def test_batch_norm_train_gradients_are_autodiff_s():
    keys = jax.random.split(jax.random.key(2), 3)
    x, scale, bias = (jax.random.normal(keys[0], (6, 4, 3, 5)),
                      jax.random.uniform(keys[1], (5,), minval=0.5, maxval=1.5),
                      jax.random.normal(keys[2], (5,)))
    check_grads(lambda *a: ops.batch_norm_train(*a, 1e-5), (x, scale, bias), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


def test_scratch_batch_norm_rejects_bad_shapes():
    with pytest.raises(ValueError, match="NHWC"):
        ops.batch_norm(jnp.ones((2, 3, 4)), *([jnp.ones(4)] * 4), train=True)
    with pytest.raises(ValueError, match="scale must have shape"):
        ops.batch_norm(jnp.ones((2, 4)), jnp.ones(3), *([jnp.ones(4)] * 3), train=True)


def test_bn_lenet_scratch_equals_concise():
    scratch = models.create("bn_lenet_scratch", seed=0)
    concise = models.create("bn_lenet", seed=1)
    assert num_params(scratch) == num_params(concise)
    assert isinstance(scratch.layers[1], layers.BatchNorm)
    assert isinstance(concise.layers[1], nnx.BatchNorm)
    nnx.update(concise, nnx.state(scratch))                  # the same state trees
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
    scratch.train()
    concise.train()
    chex.assert_trees_all_close(scratch(x), concise(x), atol=1e-5)
    chex.assert_trees_all_close(nnx.state(scratch, nnx.BatchStat),
                                nnx.state(concise, nnx.BatchStat), atol=1e-5)
    scratch.eval()
    concise.eval()
    chex.assert_trees_all_close(scratch(x), concise(x), atol=1e-5)


def test_bn_lenet_scratch_in_bfloat16_normalises_as_the_concise_model():
    """set_compute_dtype reaches the from-scratch BatchNorm as it does nnx.BatchNorm: statistics
    in float32, the output in bfloat16, so both BN-LeNets compute the same in bfloat16."""
    scratch = models.create("bn_lenet_scratch", dtype="bfloat16")
    concise = models.create("bn_lenet", dtype="bfloat16")
    nnx.update(concise, nnx.state(scratch))
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    for model in (scratch, concise):
        model.train()
    z = scratch.layers[0](x)                           # the first conv's bfloat16 output
    assert z.dtype == jnp.bfloat16
    bn_scratch, bn_concise = scratch.layers[1], concise.layers[1]
    y_scratch, y_concise = bn_scratch(z), bn_concise(z)
    assert y_scratch.dtype == y_concise.dtype == jnp.bfloat16
    # The running mean takes the float32 mean of the bfloat16 activations: 0.9 * 0 + 0.1 * mean.
    assert bn_scratch.mean[...].dtype == jnp.float32
    mean = z.astype(jnp.float32).mean(axis=(0, 1, 2))
    chex.assert_trees_all_close(bn_scratch.mean[...], 0.1 * mean, atol=1e-7)
    chex.assert_trees_all_close(bn_scratch.mean[...], bn_concise.mean[...], atol=1e-7)
    # Outputs agree to a bfloat16 rounding (1/64 near 2), the whole networks' logits too.
    chex.assert_trees_all_close(y_scratch.astype(jnp.float32), y_concise.astype(jnp.float32),
                                atol=2e-2)
    nnx.update(concise, nnx.state(scratch))
    logits = scratch(x)
    assert logits.dtype == jnp.bfloat16
    chex.assert_trees_all_close(logits.astype(jnp.float32), concise(x).astype(jnp.float32),
                                atol=5e-2)


# ----------------------------------------------------------------------------------------------
# The registry's minimum sizes; the CLI (gradients of every model: test_models.py)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, smallest", [("alexnet", 65), ("nin", 67), ("googlenet", 1),
                                            ("bn_lenet_scratch", 16), ("bn_lenet", 16),
                                            ("densenet", 29), ("regnetx32", 1)])
def test_minimum_image_size_is_exact(name, smallest):
    assert models.spec(name).min_image_size == smallest
    assert table(name, smallest)[-1] == (1, 10)
    if smallest > 1:
        with pytest.raises(ValueError, match=f"image_size {smallest - 1} is too small"):
            models.create(name, image_size=smallest - 1)
        with pytest.raises(ValueError):              # the network itself, past the registry
            model = nnx.eval_shape(lambda: models.spec(name).build(10, 1, smallest - 1,
                                                                   nnx.Rngs(0)))
            summary.layer_summary(model, (1, smallest - 1, smallest - 1, 1), print_fn=None)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_cli_summary(name, capsys):
    assert cli.main(["summary", name]) == 0
    out = capsys.readouterr().out
    assert "Total" in out and "(1, 10)" in out
