"""LeNet with batch normalization (d2l 8.5): from scratch and with the framework's BatchNorm."""

from __future__ import annotations

from functools import partial

from flax import nnx

from jaxcnn import ops
from jaxcnn.layers import BatchNorm, batch_norm, conv, dense, flatten
from jaxcnn.models.lenet import activation_and_pool

MIN_IMAGE_SIZE = 16   # the second 2x2 pooling needs 2 rows: 16 -> 12 -> 6 -> 2 -> 1


class BNLeNet(nnx.Sequential):
    """conv 6@5x5 - BN - sigmoid - avg pool 2/2 - conv 16@5x5 - BN - sigmoid - avg pool 2/2 -
    flatten - dense 120 - BN - sigmoid - dense 84 - BN - sigmoid - dense ``num_classes``.

    As the book, the first conv has no padding, so at 28x28 the flatten is 4 x 4 x 16 = 256
    wide. ``scratch`` picks ``layers.BatchNorm`` (d2l 8.5.2) over ``nnx.BatchNorm`` (8.5.3);
    both keep the same state (scale, bias, mean, var). Input ``(N, image_size, image_size,
    in_channels)``; output logits ``(N, num_classes)``. ``activation`` and ``pool`` as
    ``LeNet``'s.
    """

    def __init__(self, num_classes: int = 10, *, scratch: bool = False, in_channels: int = 1,
                 image_size: int = 28, activation: str = "sigmoid", pool: str = "avg",
                 rngs: nnx.Rngs):
        act, pool_layer = activation_and_pool("BNLeNet", activation, pool)
        norm = BatchNorm if scratch else partial(batch_norm, rngs=rngs)
        side = ops.conv_output_size(ops.conv_output_size(image_size, 5), 2, 2)
        side = ops.conv_output_size(ops.conv_output_size(side, 5), 2, 2)
        super().__init__(
            conv(in_channels, 6, 5, rngs=rngs), norm(6), act, pool_layer(2),
            conv(6, 16, 5, rngs=rngs), norm(16), act, pool_layer(2),
            flatten,
            dense(16 * side * side, 120, rngs=rngs), norm(120), act,
            dense(120, 84, rngs=rngs), norm(84), act,
            dense(84, num_classes, rngs=rngs),
        )


class BNLeNetScratch(BNLeNet):
    """``BNLeNet`` with the from-scratch ``layers.BatchNorm`` (d2l 8.5.2); the other arguments
    as ``BNLeNet``'s. ``scratch`` is not one of them: ``BNLeNet`` is the concise model."""

    def __init__(self, num_classes: int = 10, **kwargs):
        if "scratch" in kwargs:
            raise ValueError(f"BNLeNetScratch always uses layers.BatchNorm; got scratch="
                             f"{kwargs['scratch']!r} (the nnx.BatchNorm model is BNLeNet, "
                             f"'bn_lenet' in the registry)")
        super().__init__(num_classes, scratch=True, **kwargs)
