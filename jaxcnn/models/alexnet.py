"""AlexNet (d2l 8.1): five ReLU convolutions with three max poolings, three dense layers."""

from __future__ import annotations

from flax import nnx

from jaxcnn import ops
from jaxcnn.layers import MaxPool2d, conv, dense, flatten

MIN_IMAGE_SIZE = 65   # the third 3/2 max pooling needs 3 rows: 65 -> 15 -> 7 -> 3 -> 1


class AlexNet(nnx.Sequential):
    """conv 96@11x11/4 pad 1 - ReLU - max pool 3/2 - conv 256@5x5 pad 2 - ReLU - max pool 3/2 -
    conv 384, 384, 256 @3x3 pad 1, each with ReLU - max pool 3/2 - flatten - (dense 4096 - ReLU
    - dropout 0.5) x 2 - dense ``num_classes``.

    Input ``(N, image_size, image_size, in_channels)``; output logits ``(N, num_classes)``.
    At the book's 224x224 the flatten is 5 x 5 x 256 = 6400 wide.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, image_size: int = 224,
                 rngs: nnx.Rngs):
        side = ops.conv_output_size(ops.conv_output_size(image_size, 11, 4, 1), 3, 2)
        side = ops.conv_output_size(ops.conv_output_size(side, 3, 2), 3, 2)
        super().__init__(
            conv(in_channels, 96, 11, stride=4, padding=1, rngs=rngs), nnx.relu, MaxPool2d(3, 2),
            conv(96, 256, 5, padding=2, rngs=rngs), nnx.relu, MaxPool2d(3, 2),
            conv(256, 384, 3, padding=1, rngs=rngs), nnx.relu,
            conv(384, 384, 3, padding=1, rngs=rngs), nnx.relu,
            conv(384, 256, 3, padding=1, rngs=rngs), nnx.relu, MaxPool2d(3, 2),
            flatten,
            dense(256 * side * side, 4096, rngs=rngs), nnx.relu, nnx.Dropout(0.5, rngs=rngs),
            dense(4096, 4096, rngs=rngs), nnx.relu, nnx.Dropout(0.5, rngs=rngs),
            dense(4096, num_classes, rngs=rngs),
        )
