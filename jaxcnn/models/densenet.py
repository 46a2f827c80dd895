"""DenseNet (d2l 8.7): dense blocks that concatenate each conv's output to its input, joined by
transition blocks that shrink channels and resolution."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.layers import AvgPool2d, batch_norm, conv, dense, global_avg_pool
from jaxcnn.models.checks import is_positive_int, positive_int
from jaxcnn.models.resnet import stem

MIN_IMAGE_SIZE = 29   # the third transition's 2x2 pooling needs 2 rows: 29 -> 8 -> 4 -> 2 -> 1


def conv_block(in_channels: int, num_channels: int, *, rngs: nnx.Rngs) -> nnx.Sequential:
    """BN - ReLU - 3x3 conv pad 1: ``(N, H, W, in_channels) -> (N, H, W, num_channels)``."""
    return nnx.Sequential(batch_norm(in_channels, rngs=rngs), nnx.relu,
                          conv(in_channels, num_channels, 3, padding=1, rngs=rngs))


class DenseBlock(nnx.Module):
    """``num_convs`` conv blocks of ``num_channels`` (the growth rate), each output concatenated
    to its input: ``(N, H, W, in_channels) -> (N, H, W, in_channels + num_convs * num_channels)``.
    """

    def __init__(self, num_convs: int, num_channels: int, *, in_channels: int,
                 rngs: nnx.Rngs):
        self.blocks = nnx.List([conv_block(in_channels + i * num_channels, num_channels,
                                           rngs=rngs) for i in range(num_convs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = jnp.concatenate((x, block(x)), axis=-1)
        return x


def transition_block(in_channels: int, num_channels: int, *,
                     rngs: nnx.Rngs) -> nnx.Sequential:
    """BN - ReLU - 1x1 conv - 2x2 average pool:
    ``(N, H, W, in_channels) -> (N, H // 2, W // 2, num_channels)``."""
    return nnx.Sequential(batch_norm(in_channels, rngs=rngs), nnx.relu,
                          conv(in_channels, num_channels, 1, rngs=rngs), AvgPool2d(2))


class DenseNet(nnx.Sequential):
    """ResNet's stem (7x7/2 conv ``num_channels`` - BN - ReLU - 3/2 max pool) - a dense block of
    ``arch[i]`` convs per stage, with a transition block halving the channels between stages -
    BN - ReLU - global average pool - dense ``num_classes``.

    Input ``(N, H, W, in_channels)``; output logits ``(N, num_classes)``. At the book's 96x96
    the dense blocks give 24x24x192, 12x12x224, 6x6x240 and 3x3x248.
    """

    def __init__(self, num_channels: int = 64, growth_rate: int = 32,
                 arch: Sequence[int] = (4, 4, 4, 4), num_classes: int = 10, *,
                 in_channels: int = 1, rngs: nnx.Rngs):
        num_channels = positive_int("DenseNet", "num_channels", num_channels)
        growth_rate = positive_int("DenseNet", "growth_rate", growth_rate)
        if (isinstance(arch, (str, bytes)) or not isinstance(arch, Sequence) or not arch
                or not all(is_positive_int(n) for n in arch)):
            raise ValueError(f"DenseNet: arch must be a non-empty sequence of positive ints (the "
                             f"convs of each dense block); got {arch!r}")
        layers = [stem(in_channels, num_channels, rngs=rngs)]
        for i, num_convs in enumerate(arch):
            layers.append(DenseBlock(num_convs, growth_rate, in_channels=num_channels,
                                     rngs=rngs))
            num_channels += num_convs * growth_rate
            if i != len(arch) - 1:
                layers.append(transition_block(num_channels, num_channels // 2, rngs=rngs))
                num_channels //= 2
        layers.append(nnx.Sequential(batch_norm(num_channels, rngs=rngs), nnx.relu,
                                     global_avg_pool, dense(num_channels, num_classes,
                                                            rngs=rngs)))
        super().__init__(*layers)
