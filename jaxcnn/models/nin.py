"""Network in Network (d2l 8.3): NiN blocks of a conv and two 1x1 convs, a global-pool head."""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn.layers import MaxPool2d, conv, flatten

MIN_IMAGE_SIZE = 67   # the third 3/2 max pooling needs 3 rows: 67 -> 15 -> 7 -> 3 -> 1


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
              *, rngs: nnx.Rngs) -> nnx.Sequential:
    """conv ``kernel_size`` (stride, padding) - ReLU - (1x1 conv - ReLU) x 2:
    ``(N, H, W, in_channels) -> (N, H', W', out_channels)``."""
    return nnx.Sequential(
        conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, rngs=rngs),
        nnx.relu, conv(out_channels, out_channels, 1, rngs=rngs),
        nnx.relu, conv(out_channels, out_channels, 1, rngs=rngs), nnx.relu)


def adaptive_avg_pool(x: jax.Array) -> jax.Array:
    """``nn.AdaptiveAvgPool2d((1, 1))``: ``(N, H, W, C) -> (N, 1, 1, C)``."""
    return x.mean(axis=(1, 2), keepdims=True)


class NiN(nnx.Sequential):
    """NiN blocks (96, 11/4 pad 0), (256, 5 pad 2), (384, 3 pad 1), each followed by a 3/2 max
    pool - dropout 0.5 - NiN block (``num_classes``, 3 pad 1) - global average pool - flatten.

    Input ``(N, H, W, in_channels)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, rngs: nnx.Rngs):
        super().__init__(
            nin_block(in_channels, 96, 11, 4, 0, rngs=rngs), MaxPool2d(3, 2),
            nin_block(96, 256, 5, 1, 2, rngs=rngs), MaxPool2d(3, 2),
            nin_block(256, 384, 3, 1, 1, rngs=rngs), MaxPool2d(3, 2),
            nnx.Dropout(0.5, rngs=rngs),
            nin_block(384, num_classes, 3, 1, 1, rngs=rngs),
            adaptive_avg_pool, flatten,
        )
