"""AnyNet and RegNetX-32 (d2l 8.8): a 3x3 stem, stages of ResNeXt blocks, a pooled head."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from flax import nnx

from jaxcnn.layers import batch_norm, conv, dense, global_avg_pool
from jaxcnn.models.checks import arch_rows, positive_int
from jaxcnn.models.resnet import ResNeXtBlock, stage

# (depth, num_channels, group width, bottleneck multiplier) per stage, as the book's RegNetX-32.
REGNETX32_ARCH = ((4, 32, 16, 1.0), (6, 80, 16, 1.0))
MIN_IMAGE_SIZE = 1   # every conv here pads enough to take a single pixel


class AnyNet(nnx.Sequential):
    """stem (3x3/2 conv pad 1 ``stem_channels`` - BN - ReLU) - one stage per ``(depth,
    num_channels, group_width, bot_mul)`` of ``arch``, each opening with a strided (2)
    projecting ``ResNeXtBlock`` - head (global average pool, dense ``num_classes``).

    The blocks get ``groups = bottleneck channels // group_width`` groups (the book passes the
    width itself). Input ``(N, H, W, in_channels)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, arch: Sequence[tuple[int, int, int, float]], num_classes: int = 10, *,
                 stem_channels: int, in_channels: int = 1, rngs: nnx.Rngs):
        arch = arch_rows("AnyNet", arch, ("depth", "num_channels", "group_width", "bot_mul"),
                         numbers=("bot_mul",))
        stem_channels = positive_int("AnyNet", "stem_channels", stem_channels)
        layers = [nnx.Sequential(
            conv(in_channels, stem_channels, 3, stride=2, padding=1, rngs=rngs),
            batch_norm(stem_channels, rngs=rngs), nnx.relu)]
        channels = stem_channels
        for arch_row in arch:
            depth, num_channels, group_width, bot_mul = arch_row
            bot_channels = int(round(num_channels * bot_mul))
            if not 0 < group_width <= bot_channels:
                raise ValueError(f"AnyNet: group width {group_width} must be from 1 to the "
                                 f"{bot_channels} bottleneck channels of stage {arch_row!r}")
            groups = bot_channels // group_width
            block = partial(ResNeXtBlock, groups=groups, bot_mul=bot_mul)
            layers.append(stage(block, depth, channels, num_channels, False, rngs=rngs))
            channels = num_channels
        layers.append(nnx.Sequential(global_avg_pool, dense(channels, num_classes, rngs=rngs)))
        super().__init__(*layers)


RegNetX32 = partial(AnyNet, REGNETX32_ARCH, stem_channels=32)
