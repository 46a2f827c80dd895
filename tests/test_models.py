"""jaxcnn.models: the book's shapes and parameter counts, modes, gradients, the registry."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import layers, models
from jaxcnn.models import Residual, ResNeXtBlock


def num_params(module: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


# Parameter counts of the book's PyTorch models (1 input channel, 10 classes).
@pytest.mark.parametrize("name, expected", [
    ("lenet", 61_706),
    ("vgg", 43_093_322),
    ("vgg11", 128_806_154),
    ("resnet18", 11_178_378),
])
def test_parameter_counts_match_the_book(name, expected):
    # Shapes alone (nnx.eval_shape): VGG-11's 129 million values would take seconds to draw.
    assert num_params(nnx.eval_shape(lambda: models.create(name))) == expected


def test_residual_shapes():
    x = jnp.ones((4, 6, 6, 3))
    chex.assert_shape(Residual(3, rngs=nnx.Rngs(0))(x), (4, 6, 6, 3))
    block = Residual(6, use_1x1conv=True, strides=2, in_channels=3, rngs=nnx.Rngs(0))
    chex.assert_shape(block(x), (4, 3, 3, 6))


def test_resnext_block_groups_is_the_number_of_groups():
    block = ResNeXtBlock(32, groups=4, bot_mul=1, use_1x1conv=True, strides=2, in_channels=16,
                         rngs=nnx.Rngs(0))
    # HWIO: each of the 4 groups sees 32 / 4 = 8 input channels.
    assert block.conv2.kernel[...].shape == (3, 3, 8, 32)
    chex.assert_shape(block(jnp.ones((2, 8, 8, 16))), (2, 4, 4, 32))
    with pytest.raises(ValueError, match="groups=5 must divide the 32"):
        ResNeXtBlock(32, groups=5, bot_mul=1, rngs=nnx.Rngs(0))


# A module's own call under nnx.jit: it updates the module in place (BatchNorm's running
# averages) as an eager call does, where eagerly a ResNet compiles one program per operation.
call = nnx.jit(lambda module, x: module(x))


def test_resnext_model_runs():
    model = models.create("resnext", image_size=32)
    chex.assert_shape(call(model, jnp.ones((2, 32, 32, 1))), (2, 10))
    groups = {m.feature_group_count for _, m in nnx.iter_modules(model)
              if isinstance(m, nnx.Conv)}
    assert groups == {1, 16}


def test_kernels_are_xavier_uniform():
    conv = models.create("lenet").layers[3]           # conv 6 -> 16, 5x5
    kernel = np.asarray(conv.kernel[...])
    limit = np.sqrt(6 / (6 * 25 + 16 * 25))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.9 * limit         # uniform: reaches near the bound
    assert np.var(kernel) == pytest.approx(limit ** 2 / 3, rel=0.15)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 4), (5, 5, 6, 16), (1, 1, 832, 384),
                                   (3, 3, 1, 64), (7,), (1,)])
def test_initialisers_give_jax_s_values_bit_for_bit_eagerly_and_traced(shape):
    """The rounded-size draws of layers._uniform are JAX's own values, not new ones."""
    key = jax.random.key(11)
    if len(shape) >= 2:
        ours, jax_init = layers.xavier_uniform, nnx.initializers.xavier_uniform()
    else:
        ours, bound = layers.torch_bias_init(27), 1 / 27 ** 0.5
        def jax_init(key, shape, dtype):
            return jax.random.uniform(key, shape, dtype, -bound, bound)
    expected = np.asarray(jax_init(key, shape, jnp.float32))
    np.testing.assert_array_equal(np.asarray(ours(key, shape, jnp.float32)), expected)
    keys = jax.random.split(key, 2)
    traced = jax.jit(jax.vmap(lambda k: ours(k, shape, jnp.float32)))(keys)
    np.testing.assert_array_equal(np.asarray(traced[1]),
                                  np.asarray(jax_init(keys[1], shape, jnp.float32)))


# ----------------------------------------------------------------------------------------------
# BatchNorm state and train / eval modes
# ----------------------------------------------------------------------------------------------

def bn_layers(model):
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def test_batchnorm_matches_pytorch_defaults_and_modes():
    model = models.create("resnet18", image_size=32)
    bn = bn_layers(model)[0]                          # the stem's BatchNorm, after the 7x7 conv
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 1))
    stem_conv = model.layers[0].layers[0]
    batch_mean = stem_conv(x).mean(axis=(0, 1, 2))    # statistics over N, H, W

    model.train()
    call(model, x)
    chex.assert_trees_all_close(bn.mean[...], 0.1 * batch_mean, atol=1e-6)   # 0.9 * 0 + 0.1 * m
    stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))

    model.eval()
    y1, y2 = call(model, x), call(model, x)
    chex.assert_trees_all_equal(nnx.state(model, nnx.BatchStat), stats)     # untouched
    chex.assert_trees_all_equal(y1, y2)                                       # deterministic
    # Eval normalises with the running averages: the stem's BN output equals the formula.
    z = stem_conv(x)
    expected = ((z - bn.mean[...]) / jnp.sqrt(bn.var[...] + 1e-5)) * bn.scale[...] + bn.bias[...]
    chex.assert_trees_all_close(bn(z), expected, atol=1e-5)


def test_dropout_differs_between_keys_in_train_mode_only():
    model = models.create("vgg", image_size=32)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    model.train()
    a = model(x, rngs=nnx.Rngs(dropout=1))
    b = model(x, rngs=nnx.Rngs(dropout=2))
    c = model(x, rngs=nnx.Rngs(dropout=1))
    assert not np.allclose(a, b)
    chex.assert_trees_all_close(a, c)
    model.eval()
    chex.assert_trees_all_equal(model(x, rngs=nnx.Rngs(dropout=1)),
                                model(x, rngs=nnx.Rngs(dropout=2)))


# ----------------------------------------------------------------------------------------------
# Every model jits and differentiates; the split/merge pattern from plain JAX
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, size", [("lenet", 28), ("vgg", 32), ("vgg11", 32),
                                        ("resnet18", 32), ("resnext", 32), ("alexnet", 65),
                                        ("nin", 67), ("googlenet", 32), ("bn_lenet_scratch", 28),
                                        ("bn_lenet", 28), ("densenet", 32), ("regnetx32", 32)])
def test_every_model_jits_and_has_finite_gradients(name, size):
    model = models.create(name, image_size=size)
    model.train()
    x = jax.random.normal(jax.random.key(0), (4, size, size, 1))
    labels = jnp.array([1, 7, 3, 0])

    @nnx.jit
    def grads_of(model):
        def loss_fn(model):
            logits = model(x, rngs=nnx.Rngs(dropout=0))
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
        return nnx.grad(loss_fn)(model)

    grads = grads_of(model)
    chex.assert_tree_all_finite(grads)
    params = nnx.state(model, nnx.Param)
    chex.assert_trees_all_equal_shapes(grads, params)
    # Every parameter receives some gradient (no dead branch).
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))


def test_split_merge_apply_from_plain_jax():
    """The documented pattern: a pure ``apply(state, x, train)`` under jax.jit, and grads."""
    model = models.create("resnet18", image_size=32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x):
        module = nnx.merge(graphdef, state)
        module.eval()
        return module(x)

    @jax.jit
    def train_apply(state, x):
        module = nnx.merge(graphdef, state)
        module.train()
        return module(x), nnx.state(module)

    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
    before = jax.tree.leaves(jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat)))
    model.eval()
    eval_logits = call(model, x)
    chex.assert_trees_all_close(apply(state, x), eval_logits, atol=1e-5)
    logits, new_state = train_apply(state, x)
    # The pure step is the module's own train mode: the same logits (batch statistics, not the
    # running averages of eval) and the same update of every BatchNorm's running averages.
    model.train()
    chex.assert_trees_all_close(logits, call(model, x), atol=1e-5)
    assert not np.allclose(logits, eval_logits, atol=1e-3)
    after = jax.tree.leaves(nnx.filter_state(new_state, nnx.BatchStat))
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    chex.assert_trees_all_close(nnx.filter_state(new_state, nnx.BatchStat),
                                nnx.state(model, nnx.BatchStat), atol=1e-5)

    params, rest = nnx.split_state(state, nnx.Param, ...)
    loss = lambda p, x: apply(nnx.merge_state(p, rest), x).sum()
    grads = jax.jit(jax.grad(loss))(params, x)
    chex.assert_trees_all_equal_shapes(grads, params)
    chex.assert_tree_all_finite(grads)


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*lenet, vgg, vgg11, resnet18"):
        models.create("resnet9")


@pytest.mark.parametrize("name", ["lenet", "vgg"])
def test_minimum_image_size_is_exact(name):
    smallest = models.spec(name).min_image_size
    model = models.create(name, image_size=smallest)
    chex.assert_shape(model(jnp.ones((1, smallest, smallest, 1))), (1, 10))
    with pytest.raises(ValueError, match=f"image_size {smallest - 1} is too small for {name}"):
        models.create(name, image_size=smallest - 1)


@pytest.mark.parametrize("field", ["num_classes", "in_channels", "image_size"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_registry_rejects_bad_sizes(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive int"):
        models.create("lenet", **{field: value})


def test_registry_takes_numpy_integers_and_refuses_a_missing_seed():
    chex.assert_shape(models.create("lenet", image_size=np.int64(28))(jnp.ones((1, 28, 28, 1))),
                      (1, 10))
    with pytest.raises(ValueError, match=r"seed must be an int from 0 to 2\*\*32 - 1 .*; got None"):
        models.create("lenet", seed=None)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, True, 1.0])
def test_seeds_that_jax_would_alias_or_that_are_not_ints_are_refused(seed):
    # Without jax_enable_x64, jax.random.key keeps a seed's low 32 bits: 2**32 is seed 0 and
    # -1 is 2**32 - 1, so either would silently repeat another seed's model.
    with pytest.raises(ValueError, match=rf"seed must be an int from 0 to 2\*\*32 - 1 .*; got "
                                         rf"{seed!r}"):
        models.create("lenet", seed=seed)


def test_the_largest_seed_is_its_own():
    kernels = [models.create("lenet", seed=s).layers[0].kernel[...] for s in (0, 2**32 - 1)]
    assert not np.allclose(*kernels)


def test_an_empty_batch_gives_empty_logits_in_eval_mode():
    for name in ("lenet", "bn_lenet", "resnet18"):
        model = models.create(name, image_size=32)
        model.eval()
        logits = model(jnp.ones((0, 32, 32, 1)))
        chex.assert_shape(logits, (0, 10))
        assert logits.dtype == jnp.float32


def test_batch_statistics_of_an_empty_batch_are_refused_not_nan():
    for name in ("bn_lenet", "bn_lenet_scratch", "resnet18"):
        model = models.create(name, image_size=32)
        model.train()
        stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
        with pytest.raises(ValueError, match="empty batch"):
            model(jnp.ones((0, 32, 32, 1)))
        chex.assert_trees_all_equal(nnx.state(model, nnx.BatchStat), stats)


@pytest.mark.parametrize("name, arch, size, widths", [
    ("resnet18", ((1, 16), (1, 32)), 32, {64, 16, 32}),       # the stem's 64, then the stages
    ("resnext", ((1, 32), (1, 64)), 32, {64, 32}),            # the first stage wider than the
    ("regnetx32", ((1, 32, 16, 1.0),), 32, {32}),             # stem; bottlenecks as wide
    ("vgg", ((1, 8), (1, 16)), 32, {8, 16})])
def test_arch_overrides_build_the_given_stages(name, arch, size, widths):
    model = models.create(name, image_size=size, arch=arch)
    model.eval()
    chex.assert_shape(model(jnp.ones((2, size, size, 1))), (2, 10))
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    assert {m.out_features for m in convs} == widths
    # The stem's conv and one block per stage, each projecting its input here (a 1x1 conv):
    # Residual 2 + 1 convs, ResNeXtBlock 3 + 1; a VGG block of one conv.
    expected = {"resnet18": 1 + 2 * 3, "resnext": 1 + 2 * 4, "regnetx32": 1 + 4, "vgg": 2}
    assert len(convs) == expected[name]


@pytest.mark.parametrize("build, message", [
    (lambda: models.create("vgg", image_size=32, arch=((1, 8),) * 6),
     "VGG: image_size 32 is too small for 6 blocks, each halving it; it needs at least 64"),
    (lambda: models.create("resnext", groups=0),
     "groups must be an integer from 1 to the 64 bottleneck channels; got 0"),
    (lambda: models.create("regnetx32", arch=((1, 32, 64, 1.0),)),
     r"group width 64 must be from 1 to the 32 bottleneck channels of stage \(1, 32, 64, 1.0\)"),
])
def test_architectures_that_cannot_work_are_refused_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


VGG_ROW = r"\(num_convs, out_channels\)"
RESNET_ROW = r"\(num_blocks, num_channels\)"
REGNET_ROW = r"\(depth, num_channels, group_width, bot_mul\)"


@pytest.mark.parametrize("name, overrides, message", [
    ("vgg", dict(arch=((1, -4),)), rf"VGG: out_channels must be a positive int in each arch row "
                                   rf"{VGG_ROW}; got -4 in \(1, -4\)"),
    ("vgg", dict(arch="abc"), rf"VGG: arch must be a non-empty sequence of {VGG_ROW} rows; "
                              rf"got 'abc'"),
    ("vgg", dict(arch=()), rf"VGG: arch must be a non-empty sequence of {VGG_ROW} rows; got "
                           rf"\(\)"),
    ("vgg", dict(arch=((0, 64),)), r"VGG: num_convs must be a positive int .*; got 0 in"),
    ("vgg", dict(arch=((1.5, 8),)), r"VGG: num_convs must be a positive int .*; got 1.5 in"),
    ("vgg11", dict(arch=((1, 8, 2),)), rf"VGG: each arch row must be {VGG_ROW}; got \(1, 8, 2\)"),
    ("vgg11", dict(arch=[[1, True]]), r"VGG: out_channels must be a positive int .*; got True"),
    ("resnet18", dict(arch=()), rf"ResNet: arch must be a non-empty sequence of {RESNET_ROW}"),
    ("resnet18", dict(arch=((0, 64),)), r"ResNet: num_blocks must be a positive int .*; got 0"),
    ("resnet18", dict(arch=((2, 64), "ab")), rf"ResNet: each arch row must be {RESNET_ROW}; got "
                                             rf"'ab'"),
    ("resnet18", dict(stem_channels=0), r"ResNet: stem_channels must be a positive int, got 0"),
    ("resnext", dict(arch=((1, -32),)), r"ResNet: num_channels must be a positive int .*; got "
                                        r"-32"),
    ("resnext", dict(bot_mul=0), r"ResNeXtBlock: bot_mul must be a positive number, got 0"),
    ("resnext", dict(bot_mul=float("inf")), r"bot_mul must be a positive number, got inf"),
    ("resnext", dict(groups=True), r"groups must be an integer from 1 to the 64 bottleneck "
                                   r"channels; got True"),
    ("regnetx32", dict(arch=((1, 32, 16),)), rf"AnyNet: each arch row must be {REGNET_ROW}"),
    ("regnetx32", dict(arch=((1, 32, 16, -1.0),)), r"AnyNet: bot_mul must be a positive number "
                                                   r".*; got -1.0"),
    ("regnetx32", dict(arch=((0, 32, 16, 1.0),)), r"AnyNet: depth must be a positive int"),
    ("regnetx32", dict(stem_channels=-1), r"AnyNet: stem_channels must be a positive int"),
    ("densenet", dict(arch=()), r"DenseNet: arch must be a non-empty sequence of positive ints "
                                r"\(the convs of each dense block\); got \(\)"),
    ("densenet", dict(arch=(4, 0)), r"DenseNet: arch must be .*; got \(4, 0\)"),
    ("densenet", dict(arch="44"), r"DenseNet: arch must be .*; got '44'"),
    ("densenet", dict(growth_rate=0), r"DenseNet: growth_rate must be a positive int, got 0"),
    ("densenet", dict(num_channels=2.5), r"DenseNet: num_channels must be a positive int"),
])
def test_bad_architecture_values_are_explained(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        nnx.eval_shape(lambda: models.create(name, image_size=32, **overrides))


def test_config_json_arch_lists_build_the_same_model_as_tuples():
    a = models.create("vgg", image_size=32, arch=((1, 8), (1, 16)))
    b = models.create("vgg", image_size=32, arch=[[1, 8], [1, 16]])
    chex.assert_trees_all_equal(nnx.state(a), nnx.state(b))


@pytest.mark.parametrize("name, scratch, message", [
    ("bn_lenet_scratch", False, "BNLeNetScratch always uses layers.BatchNorm; got scratch=False"),
    ("bn_lenet_scratch", True, "BNLeNetScratch always uses layers.BatchNorm; got scratch=True"),
    ("bn_lenet", True, "bn_lenet uses nnx.BatchNorm; got scratch=True .*bn_lenet_scratch"),
])
def test_the_model_name_alone_picks_the_batchnorm(name, scratch, message):
    with pytest.raises(ValueError, match=message):
        models.create(name, scratch=scratch)


def test_default_image_sizes_are_the_books():
    sizes = {name: models.spec(name).image_size for name in models.REGISTRY}
    assert sizes == {"lenet": 28, "vgg": 224, "vgg11": 224, "resnet18": 96, "resnext": 96,
                     "alexnet": 224, "nin": 224, "googlenet": 96, "bn_lenet_scratch": 28,
                     "bn_lenet": 28, "densenet": 96, "regnetx32": 96}


def test_same_seed_same_parameters():
    a, b, c = (models.create("lenet", seed=s) for s in (0, 0, 1))
    chex.assert_trees_all_equal(nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))
    assert not np.allclose(a.layers[0].kernel[...], c.layers[0].kernel[...])


def test_bfloat16_compute_dtype_runs_convs_and_dense_layers_in_bfloat16():
    model = models.create("bn_lenet", dtype="bfloat16")
    model.eval()
    x = jnp.ones((2, 28, 28, 1))
    jaxpr = str(jax.make_jaxpr(lambda x: model(x))(x))
    for op in ("conv_general_dilated", "dot_general"):
        lines = [line for line in jaxpr.splitlines() if op + "[" in line]
        assert lines and all("bf16[" in line for line in lines), op
    assert model(x).dtype == jnp.bfloat16
    kinds = {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))}
    assert kinds == {jnp.dtype("float32")}
    with pytest.raises(ValueError, match="compute dtype must be one of float32, bfloat16; "
                                         "got 'float16'"):
        models.create("lenet", dtype="float16")
