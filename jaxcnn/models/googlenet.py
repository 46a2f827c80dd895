"""GoogLeNet (d2l 8.4): Inception blocks of four parallel branches, in five stages b1-b5."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.layers import MaxPool2d, conv, dense, global_avg_pool

MIN_IMAGE_SIZE = 1   # every conv and pool here pads enough to take a single pixel

# The book's Inception channels (c1, (c2 1x1, c2 3x3), (c3 1x1, c3 5x5), c4) of b3, b4 and b5.
B3 = ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64))
B4 = ((192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64),
      (128, (128, 256), (24, 64), 64), (112, (144, 288), (32, 64), 64),
      (256, (160, 320), (32, 128), 128))
B5 = ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128))


class Inception(nnx.Module):
    """Four branches, each ending in ReLU, concatenated on channels: 1x1 conv ``c1``; 1x1 conv
    ``c2[0]`` - 3x3 conv ``c2[1]``; 1x1 conv ``c3[0]`` - 5x5 conv ``c3[1]``; 3x3/1 max pool -
    1x1 conv ``c4``. ``(N, H, W, in_channels) -> (N, H, W, c1 + c2[1] + c3[1] + c4)``.
    """

    def __init__(self, in_channels: int, c1: int, c2: Sequence[int], c3: Sequence[int],
                 c4: int, *, rngs: nnx.Rngs):
        self.b1_1 = conv(in_channels, c1, 1, rngs=rngs)
        self.b2_1 = conv(in_channels, c2[0], 1, rngs=rngs)
        self.b2_2 = conv(c2[0], c2[1], 3, padding=1, rngs=rngs)
        self.b3_1 = conv(in_channels, c3[0], 1, rngs=rngs)
        self.b3_2 = conv(c3[0], c3[1], 5, padding=2, rngs=rngs)
        self.b4_1 = MaxPool2d(3, 1, 1)
        self.b4_2 = conv(in_channels, c4, 1, rngs=rngs)
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = nnx.relu(self.b1_1(x))
        b2 = nnx.relu(self.b2_2(nnx.relu(self.b2_1(x))))
        b3 = nnx.relu(self.b3_2(nnx.relu(self.b3_1(x))))
        b4 = nnx.relu(self.b4_2(self.b4_1(x)))
        return jnp.concatenate((b1, b2, b3, b4), axis=-1)


def inceptions(in_channels: int, channels: Sequence[tuple], *,
               rngs: nnx.Rngs) -> list[Inception]:
    """One ``Inception`` per ``(c1, c2, c3, c4)`` of ``channels``, each fed by the last."""
    blocks = []
    for c in channels:
        blocks.append(Inception(in_channels, *c, rngs=rngs))
        in_channels = blocks[-1].out_channels
    return blocks


class GoogLeNet(nnx.Sequential):
    """b1 (7x7/2 conv 64 - ReLU - 3/2 max pool), b2 (1x1 conv 64 - ReLU - 3x3 conv 192 - ReLU -
    3/2 max pool), b3 (2 Inceptions - 3/2 max pool), b4 (5 Inceptions - 3/2 max pool), b5
    (2 Inceptions - global average pool), dense ``num_classes``; all pools pad 1.

    Input ``(N, H, W, in_channels)``; output logits ``(N, num_classes)``. At the book's 96x96
    the stages give 24x24x64, 12x12x192, 6x6x480, 3x3x832 and 1024 features.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, rngs: nnx.Rngs):
        b1 = nnx.Sequential(conv(in_channels, 64, 7, stride=2, padding=3, rngs=rngs), nnx.relu,
                            MaxPool2d(3, 2, 1))
        b2 = nnx.Sequential(conv(64, 64, 1, rngs=rngs), nnx.relu,
                            conv(64, 192, 3, padding=1, rngs=rngs), nnx.relu, MaxPool2d(3, 2, 1))
        b3 = inceptions(192, B3, rngs=rngs)
        b4 = inceptions(b3[-1].out_channels, B4, rngs=rngs)
        b5 = inceptions(b4[-1].out_channels, B5, rngs=rngs)
        super().__init__(
            b1, b2,
            nnx.Sequential(*b3, MaxPool2d(3, 2, 1)),
            nnx.Sequential(*b4, MaxPool2d(3, 2, 1)),
            nnx.Sequential(*b5, global_avg_pool),
            dense(b5[-1].out_channels, num_classes, rngs=rngs),
        )
