"""LeNet-5 (d2l 7.6): two sigmoid conv layers with average pooling, three dense layers."""

from __future__ import annotations

from flax import nnx

from jaxcnn import ops
from jaxcnn.layers import AvgPool2d, MaxPool2d, conv, dense, flatten

MIN_IMAGE_SIZE = 12   # the 5x5 conv after the first pooling needs at least 5 + 2 x 2 rows left
ACTIVATIONS = {"sigmoid": nnx.sigmoid, "relu": nnx.relu}
POOLS = {"avg": AvgPool2d, "max": MaxPool2d}


def activation_and_pool(model: str, activation: str, pool: str):
    """The activation function and pooling layer class named ``activation`` and ``pool``;
    ``ValueError`` naming ``model`` and the choices otherwise."""
    if activation not in ACTIVATIONS or pool not in POOLS:
        raise ValueError(f"{model}: activation must be one of {sorted(ACTIVATIONS)} and pool "
                         f"one of {sorted(POOLS)}; got {activation!r}, {pool!r}")
    return ACTIVATIONS[activation], POOLS[pool]


class LeNet(nnx.Sequential):
    """conv 6@5x5 pad 2 - sigmoid - avg pool 2/2 - conv 16@5x5 - sigmoid - avg pool 2/2 -
    flatten - dense 120 - sigmoid - dense 84 - sigmoid - dense ``num_classes``.

    Input ``(N, image_size, image_size, in_channels)``; output logits ``(N, num_classes)``.
    At the book's 28x28 the flatten is 16 x 5 x 5 = 400 wide. ``activation`` ('sigmoid' or
    'relu') and ``pool`` ('avg' or 'max') give the modernised variant of the improved recipe.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, image_size: int = 28,
                 activation: str = "sigmoid", pool: str = "avg", rngs: nnx.Rngs):
        act, pool_layer = activation_and_pool("LeNet", activation, pool)
        side = ops.conv_output_size(image_size, 5, 1, 2) // 2
        side = ops.conv_output_size(side, 5) // 2
        super().__init__(
            conv(in_channels, 6, 5, padding=2, rngs=rngs), act, pool_layer(2),
            conv(6, 16, 5, rngs=rngs), act, pool_layer(2),
            flatten,
            dense(16 * side * side, 120, rngs=rngs), act,
            dense(120, 84, rngs=rngs), act,
            dense(84, num_classes, rngs=rngs),
        )
