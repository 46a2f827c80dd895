"""The model registry: ``create(name, ...)`` builds any of the book's networks by name.

Every model is a Flax NNX module taking NHWC images and returning logits ``(N, num_classes)``;
``model.train()`` / ``model.eval()`` switch BatchNorm and Dropout between batch statistics with
dropout on and running averages with dropout off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flax import nnx

from jaxcnn.models import lenet, resnet, vgg
from jaxcnn.models.lenet import LeNet
from jaxcnn.models.resnet import ResNet, ResNet18, ResNeXt, ResNeXtBlock, Residual
from jaxcnn.models.vgg import VGG, vgg_block

__all__ = ["LeNet", "VGG", "vgg_block", "ResNet", "ResNet18", "ResNeXt", "Residual",
           "ResNeXtBlock", "ModelSpec", "REGISTRY", "create", "spec"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what the book trains it on."""

    build: Callable[..., nnx.Module]   # build(num_classes, in_channels, image_size, rngs, **kw)
    image_size: int                    # the book's input side (Fashion-MNIST resized)
    min_image_size: int                # the smallest side the network can process
    book_lr: float                     # the book's SGD learning rate for this model
    description: str


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
        lambda n, c, s, rngs, **kw: ResNet18(n, in_channels=c, rngs=rngs, **kw),
        96, resnet.MIN_IMAGE_SIZE, 0.01, "ResNet-18 (d2l 8.6.3)"),
    "resnext": ModelSpec(
        lambda n, c, s, rngs, **kw: ResNeXt(num_classes=n, in_channels=c, rngs=rngs, **kw),
        96, resnet.MIN_IMAGE_SIZE, 0.01, "ResNet-18's layout of ResNeXt blocks, 16 groups (d2l 8.6.5)"),
}


def spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, *, num_classes: int = 10, in_channels: int = 1,
           image_size: int | None = None, seed: int = 0, **overrides: Any) -> nnx.Module:
    """Build model ``name`` for ``(N, image_size, image_size, in_channels)`` inputs.

    ``image_size`` defaults to the book's (LeNet 28, VGG 224, ResNet 96); ``overrides`` go to
    the model's constructor (e.g. ``arch=...``). Parameters come from ``nnx.Rngs(seed)``.
    """
    entry = spec(name)
    image_size = entry.image_size if image_size is None else image_size
    for field, value in (("num_classes", num_classes), ("in_channels", in_channels),
                         ("image_size", image_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if image_size < entry.min_image_size:
        raise ValueError(f"image_size {image_size} is too small for {name}: it needs at least "
                         f"{entry.min_image_size} (the book uses {entry.image_size})")
    return entry.build(num_classes, in_channels, image_size, nnx.Rngs(seed), **overrides)
