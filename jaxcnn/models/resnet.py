"""ResNet and ResNeXt (d2l 8.6): residual blocks, stages, the 7x7 stem and a pooled head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
from flax import nnx

from jaxcnn.layers import MaxPool2d, batch_norm, conv, dense, global_avg_pool
from jaxcnn.models.checks import arch_rows, is_positive_int, is_positive_number, positive_int

RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))
MIN_IMAGE_SIZE = 1   # every conv and pool here pads enough to take a single pixel


class Residual(nnx.Module):
    """The book's residual block: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input (through a
    1x1 conv with the same stride when ``use_1x1conv``), then ReLU.

    ``(N, H, W, in_channels) -> (N, ceil(H / strides), ceil(W / strides), num_channels)``; without
    the projection, ``in_channels`` must equal ``num_channels`` and ``strides`` be 1.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, *,
                 in_channels: int | None = None, rngs: nnx.Rngs):
        in_channels = num_channels if in_channels is None else in_channels
        self.conv1 = conv(in_channels, num_channels, 3, stride=strides, padding=1, rngs=rngs)
        self.bn1 = batch_norm(num_channels, rngs=rngs)
        self.conv2 = conv(num_channels, num_channels, 3, padding=1, rngs=rngs)
        self.bn2 = batch_norm(num_channels, rngs=rngs)
        self.conv3 = (conv(in_channels, num_channels, 1, stride=strides, rngs=rngs)
                      if use_1x1conv else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.conv3 is None else self.conv3(x)
        return nnx.relu(y + shortcut)


class ResNeXtBlock(nnx.Module):
    """The book's ResNeXt block: 1x1 conv to ``num_channels * bot_mul`` bottleneck channels, a
    grouped 3x3 conv (stride) with ``groups`` groups -- the number of groups, not their width --,
    a 1x1 conv back to ``num_channels``, each followed by BN (ReLU after the first two); the
    input joins through a strided 1x1 conv + BN when ``use_1x1conv``; then ReLU.

    ``(N, H, W, in_channels) -> (N, ceil(H / strides), ceil(W / strides), num_channels)``.
    """

    def __init__(self, num_channels: int, groups: int, bot_mul: float,
                 use_1x1conv: bool = False, strides: int = 1, *, in_channels: int | None = None,
                 rngs: nnx.Rngs):
        in_channels = num_channels if in_channels is None else in_channels
        if not is_positive_number(bot_mul):
            raise ValueError(f"ResNeXtBlock: bot_mul must be a positive number, got {bot_mul!r}")
        bot_channels = int(round(num_channels * bot_mul))
        if not (is_positive_int(groups) and groups <= bot_channels):
            raise ValueError(f"ResNeXtBlock: groups must be an integer from 1 to the "
                             f"{bot_channels} bottleneck channels; got {groups!r}")
        if bot_channels % groups:
            raise ValueError(f"ResNeXtBlock: groups={groups} must divide the {bot_channels} "
                             f"bottleneck channels (num_channels={num_channels} x "
                             f"bot_mul={bot_mul})")
        self.conv1 = conv(in_channels, bot_channels, 1, rngs=rngs)
        self.bn1 = batch_norm(bot_channels, rngs=rngs)
        self.conv2 = conv(bot_channels, bot_channels, 3, stride=strides, padding=1,
                          groups=groups, rngs=rngs)
        self.bn2 = batch_norm(bot_channels, rngs=rngs)
        self.conv3 = conv(bot_channels, num_channels, 1, rngs=rngs)
        self.bn3 = batch_norm(num_channels, rngs=rngs)
        if use_1x1conv:
            self.conv4 = conv(in_channels, num_channels, 1, stride=strides, rngs=rngs)
            self.bn4 = batch_norm(num_channels, rngs=rngs)
        else:
            self.conv4 = self.bn4 = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.conv4 is None else self.bn4(self.conv4(x))
        return nnx.relu(y + shortcut)


def stem(in_channels: int, out_channels: int = 64, *, rngs: nnx.Rngs) -> nnx.Sequential:
    """The book's ``b1``: 7x7/2 conv pad 3 - BN - ReLU - 3x3/2 max pool pad 1 (H -> ~H / 4)."""
    return nnx.Sequential(conv(in_channels, out_channels, 7, stride=2, padding=3, rngs=rngs),
                          batch_norm(out_channels, rngs=rngs), nnx.relu, MaxPool2d(3, 2, 1))


def stage(block: Callable[..., nnx.Module], num_blocks: int, in_channels: int,
          num_channels: int, first_stage: bool, *, rngs: nnx.Rngs) -> nnx.Sequential:
    """``num_blocks`` blocks; every stage but the first starts with a strided projecting block
    that halves the resolution. The first stage keeps it, projecting (1x1, stride 1) only where
    its width differs from the stem's (never in the book's architectures)."""
    blocks = []
    for i in range(num_blocks):
        if i == 0 and not first_stage:
            blocks.append(block(num_channels, use_1x1conv=True, strides=2,
                                in_channels=in_channels, rngs=rngs))
        elif i == 0:
            blocks.append(block(num_channels, use_1x1conv=in_channels != num_channels,
                                in_channels=in_channels, rngs=rngs))
        else:
            blocks.append(block(num_channels, rngs=rngs))
    return nnx.Sequential(*blocks)


class ResNet(nnx.Sequential):
    """stem - one stage per ``(num_blocks, num_channels)`` of ``arch`` - head (global average
    pool, dense ``num_classes``). ``block`` builds the residual blocks (``Residual`` or a
    ``partial`` of ``ResNeXtBlock``).

    Input ``(N, H, W, in_channels)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, arch: Sequence[tuple[int, int]] = RESNET18_ARCH, num_classes: int = 10, *,
                 block: Callable[..., nnx.Module] = Residual, in_channels: int = 1,
                 stem_channels: int = 64, rngs: nnx.Rngs):
        arch = arch_rows("ResNet", arch, ("num_blocks", "num_channels"))
        stem_channels = positive_int("ResNet", "stem_channels", stem_channels)
        layers, channels = [stem(in_channels, stem_channels, rngs=rngs)], stem_channels
        for i, (num_blocks, num_channels) in enumerate(arch):
            layers.append(stage(block, num_blocks, channels, num_channels, i == 0, rngs=rngs))
            channels = num_channels
        layers.append(nnx.Sequential(global_avg_pool, dense(channels, num_classes, rngs=rngs)))
        super().__init__(*layers)


ResNet18 = partial(ResNet, RESNET18_ARCH)


def ResNeXt(arch: Sequence[tuple[int, int]] = RESNET18_ARCH, num_classes: int = 10, *,
            groups: int = 16, bot_mul: float = 1.0, **kwargs) -> ResNet:
    """ResNet's stem, stages and head built from ``ResNeXtBlock(groups, bot_mul)``."""
    block = partial(ResNeXtBlock, groups=groups, bot_mul=bot_mul)
    return ResNet(arch, num_classes, block=block, **kwargs)
