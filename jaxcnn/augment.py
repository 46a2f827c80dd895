"""On-device data augmentation, inside the jitted train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def random_crop_flip(images: jax.Array, key: jax.Array, pad: int = 2) -> jax.Array:
    """Shift each image by up to ``pad`` pixels (zero fill) and flip half of them left-right.

    images: ``(B, H, W, C)`` -> ``(B, H, W, C)``, same dtype; ``key`` a PRNG key.
    """
    b, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    crops = jax.vmap(lambda image, o: lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    return jnp.where(flip, crops[:, :, ::-1], crops)
