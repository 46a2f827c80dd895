"""VGG (d2l 8.2): blocks of 3x3 convolutions and 2x2 max pooling, then three dense layers."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from jaxcnn.layers import MaxPool2d, conv, dense, flatten
from jaxcnn.models.checks import arch_rows

SMALL_ARCH = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))    # the book's trained model
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))   # VGG-11's full widths
MIN_IMAGE_SIZE = 32   # five halvings


def vgg_block(num_convs: int, in_channels: int, out_channels: int, *,
              rngs: nnx.Rngs) -> nnx.Sequential:
    """``num_convs`` x (3x3 conv pad 1, ReLU), then 2x2 max pooling: ``(N, H, W, C_in)`` ->
    ``(N, H // 2, W // 2, out_channels)``."""
    layers = []
    for i in range(num_convs):
        layers += [conv(in_channels if i == 0 else out_channels, out_channels, 3, padding=1,
                        rngs=rngs), nnx.relu]
    return nnx.Sequential(*layers, MaxPool2d(2))


class VGG(nnx.Sequential):
    """``arch`` = ((num_convs, out_channels), ...) VGG blocks - flatten - dense 4096 - ReLU -
    dropout 0.5 - dense 4096 - ReLU - dropout 0.5 - dense ``num_classes``.

    Input ``(N, image_size, image_size, in_channels)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, arch: Sequence[tuple[int, int]] = SMALL_ARCH, num_classes: int = 10, *,
                 in_channels: int = 1, image_size: int = 224, rngs: nnx.Rngs):
        arch = arch_rows("VGG", arch, ("num_convs", "out_channels"))
        side = image_size // 2 ** len(arch)
        if side < 1:
            raise ValueError(f"VGG: image_size {image_size} is too small for {len(arch)} blocks, "
                             f"each halving it; it needs at least {2 ** len(arch)}")
        blocks, channels = [], in_channels
        for num_convs, out_channels in arch:
            blocks.append(vgg_block(num_convs, channels, out_channels, rngs=rngs))
            channels = out_channels
        super().__init__(
            *blocks, flatten,
            dense(channels * side * side, 4096, rngs=rngs), nnx.relu, nnx.Dropout(0.5, rngs=rngs),
            dense(4096, 4096, rngs=rngs), nnx.relu, nnx.Dropout(0.5, rngs=rngs),
            dense(4096, num_classes, rngs=rngs),
        )
