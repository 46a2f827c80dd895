"""The model registry: ``create(name, ...)`` builds any of the book's networks by name.

Every model is a Flax NNX module taking NHWC images and returning logits ``(N, num_classes)``;
``model.train()`` / ``model.eval()`` switch BatchNorm and Dropout between batch statistics with
dropout on and running averages with dropout off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxcnn import layers
from jaxcnn.models import alexnet, bn_lenet, densenet, googlenet, lenet, nin, regnet, resnet, vgg
from jaxcnn.models.alexnet import AlexNet
from jaxcnn.models.bn_lenet import BNLeNet, BNLeNetScratch
from jaxcnn.models.densenet import DenseBlock, DenseNet, conv_block, transition_block
from jaxcnn.models.googlenet import GoogLeNet, Inception
from jaxcnn.models.lenet import LeNet
from jaxcnn.models.nin import NiN, nin_block
from jaxcnn.models.regnet import AnyNet, RegNetX32
from jaxcnn.models.resnet import Residual, ResNet, ResNet18, ResNeXt, ResNeXtBlock
from jaxcnn.models.vgg import VGG, vgg_block

__all__ = ["LeNet", "VGG", "vgg_block", "ResNet", "ResNet18", "ResNeXt", "Residual",
           "ResNeXtBlock", "AlexNet", "NiN", "nin_block", "GoogLeNet", "Inception", "BNLeNet",
           "BNLeNetScratch", "DenseNet", "DenseBlock", "conv_block", "transition_block",
           "AnyNet", "RegNetX32", "ModelSpec", "REGISTRY", "COMPUTE_DTYPES", "SEEDS", "create",
           "spec", "set_compute_dtype"]

COMPUTE_DTYPES = ("float32", "bfloat16")
SEEDS = 2**32   # distinct seeds: without jax_enable_x64, jax.random.key takes seed mod 2**32


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what the book trains it on."""

    build: Callable[..., nnx.Module]   # build(num_classes, in_channels, image_size, rngs, **kw)
    image_size: int                    # the book's input side (Fashion-MNIST resized)
    min_image_size: int                # the smallest side the network can process
    book_lr: float                     # the book's SGD learning rate for this model
    description: str


def _no_scratch(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` for 'bn_lenet', whose name (not a ``scratch`` flag) picks nnx.BatchNorm."""
    if "scratch" in overrides:
        raise ValueError(f"bn_lenet uses nnx.BatchNorm; got scratch={overrides['scratch']!r} "
                         f"(the from-scratch model is bn_lenet_scratch)")
    return overrides


REGISTRY: dict[str, ModelSpec] = {
    "lenet": ModelSpec(
        lambda n, c, s, rngs, **kw: LeNet(n, in_channels=c, image_size=s, rngs=rngs, **kw),
        28, lenet.MIN_IMAGE_SIZE, 0.1, "LeNet-5 (d2l 7.6)"),
    "vgg": ModelSpec(
        lambda n, c, s, rngs, **kw: VGG(kw.pop("arch", vgg.SMALL_ARCH), n, in_channels=c,
                                        image_size=s, rngs=rngs, **kw),
        224, vgg.MIN_IMAGE_SIZE, 0.01, "VGG with the book's small arch (d2l 8.2.3)"),
    "vgg11": ModelSpec(
        lambda n, c, s, rngs, **kw: VGG(kw.pop("arch", vgg.VGG11_ARCH), n, in_channels=c,
                                        image_size=s, rngs=rngs, **kw),
        224, vgg.MIN_IMAGE_SIZE, 0.01, "VGG-11 with full widths (d2l 8.2.2)"),
    "resnet18": ModelSpec(
        lambda n, c, s, rngs, **kw: ResNet(kw.pop("arch", resnet.RESNET18_ARCH), n,
                                           in_channels=c, rngs=rngs, **kw),
        96, resnet.MIN_IMAGE_SIZE, 0.01, "ResNet-18 (d2l 8.6.3)"),
    "resnext": ModelSpec(
        lambda n, c, s, rngs, **kw: ResNeXt(num_classes=n, in_channels=c, rngs=rngs, **kw),
        96, resnet.MIN_IMAGE_SIZE, 0.01,
        "ResNet-18's layout of ResNeXt blocks, 16 groups (d2l 8.6.5)"),
    "alexnet": ModelSpec(
        lambda n, c, s, rngs, **kw: AlexNet(n, in_channels=c, image_size=s, rngs=rngs, **kw),
        224, alexnet.MIN_IMAGE_SIZE, 0.01, "AlexNet (d2l 8.1)"),
    "nin": ModelSpec(
        lambda n, c, s, rngs, **kw: NiN(n, in_channels=c, rngs=rngs, **kw),
        224, nin.MIN_IMAGE_SIZE, 0.05, "Network in Network (d2l 8.3)"),
    "googlenet": ModelSpec(
        lambda n, c, s, rngs, **kw: GoogLeNet(n, in_channels=c, rngs=rngs, **kw),
        96, googlenet.MIN_IMAGE_SIZE, 0.01, "GoogLeNet (d2l 8.4)"),
    "bn_lenet_scratch": ModelSpec(
        lambda n, c, s, rngs, **kw: BNLeNetScratch(n, in_channels=c, image_size=s, rngs=rngs,
                                                   **kw),
        28, bn_lenet.MIN_IMAGE_SIZE, 0.1, "LeNet with BatchNorm from scratch (d2l 8.5.2)"),
    "bn_lenet": ModelSpec(
        lambda n, c, s, rngs, **kw: BNLeNet(n, in_channels=c, image_size=s, rngs=rngs,
                                            **_no_scratch(kw)),
        28, bn_lenet.MIN_IMAGE_SIZE, 0.1, "LeNet with nnx.BatchNorm (d2l 8.5.3)"),
    "densenet": ModelSpec(
        lambda n, c, s, rngs, **kw: DenseNet(num_classes=n, in_channels=c, rngs=rngs, **kw),
        96, densenet.MIN_IMAGE_SIZE, 0.01, "DenseNet, 4 dense blocks of 4 convs (d2l 8.7)"),
    "regnetx32": ModelSpec(
        lambda n, c, s, rngs, **kw: AnyNet(kw.pop("arch", regnet.REGNETX32_ARCH), n,
                                           in_channels=c, rngs=rngs,
                                           **{"stem_channels": 32, **kw}),
        96, regnet.MIN_IMAGE_SIZE, 0.05, "RegNetX-32: AnyNet with the book's settings (d2l 8.8)"),
}


def spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def set_compute_dtype(model: nnx.Module, dtype: str) -> nnx.Module:
    """Make every conv, dense and BatchNorm layer of ``model`` (Flax's, and the book's
    from-scratch ``layers.BatchNorm``) compute in ``dtype`` (one of ``COMPUTE_DTYPES``); returns
    ``model``. Parameters and BatchNorm statistics stay float32: the layers cast them to
    ``dtype`` in each call, so gradients and optimizer state are float32, and BatchNorm computes
    its statistics in float32. Logits come out in ``dtype``."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got "
                         f"{dtype!r}")
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (nnx.Conv, nnx.Linear, nnx.BatchNorm, layers.BatchNorm)):
            module.dtype = jnp.dtype(dtype)
    return model


def create(name: str, *, num_classes: int = 10, in_channels: int = 1,
           image_size: int | None = None, seed: int = 0, dtype: str = "float32",
           rngs: nnx.Rngs | None = None, **overrides: Any) -> nnx.Module:
    """Build model ``name`` for ``(N, image_size, image_size, in_channels)`` inputs.

    ``image_size`` defaults to the book's (the LeNets 28, AlexNet, VGG and NiN 224, the others
    96); ``overrides`` go to the model's constructor (e.g. ``arch=...``). Parameters come from
    ``nnx.Rngs(seed)``, or from ``rngs`` when given (``seed`` is then unused: ``rngs`` may hold
    a traced key, so that ``jax.vmap`` over keys builds many models' parameters at once);
    ``dtype`` is the compute dtype (see ``set_compute_dtype``).
    """
    entry = spec(name)
    image_size = entry.image_size if image_size is None else image_size
    for field, value in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("image_size", image_size)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool) or not 0 <= seed < SEEDS:
        raise ValueError(f"seed must be an int from 0 to 2**32 - 1 (jax.random.key keeps a "
                         f"seed's low 32 bits: 2**32 would give seed 0's model); got {seed!r}")
    if image_size < entry.min_image_size:
        raise ValueError(f"image_size {image_size} is too small for {name}: it needs at least "
                         f"{entry.min_image_size} (the book uses {entry.image_size})")
    model = entry.build(int(num_classes), int(in_channels), int(image_size),
                        nnx.Rngs(int(seed)) if rngs is None else rngs, **overrides)
    return set_compute_dtype(model, dtype)
