"""The input pipeline: Fashion-MNIST cut into batches on the host, scaled and resized on the
device.

The dataset itself (sources, the tfds builder, the cache) is `jaxcnn.dataset`; its public
names are re-exported here (`data.fashion_mnist`, `data.read_sources`, `data.FashionMnist`, ...;
patch module constants such as `URL` in `jaxcnn.dataset`). The host moves only uint8 images
[B, 28, 28, 1]; `preprocess` scales and resizes them on the device inside the jitted step.
"""

from __future__ import annotations

from numbers import Integral

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import dataset
from jaxcnn.dataset import (
    CLASS_NAMES,
    DEBIAN_DIR,
    ENV_VAR,
    SPLITS,
    TFDS_NAME,
    TFDS_VERSION,
    URL,
    DataError,
    MissingSourceError,
    cache_path,
    fashion_mnist,
    read_sources,
)

__all__ = ["CLASS_NAMES", "DEBIAN_DIR", "ENV_VAR", "SPLITS", "TFDS_NAME", "TFDS_VERSION", "URL",
           "DataError", "MissingSourceError", "batches", "cache_path", "fashion_mnist",
           "num_batches", "preprocess", "read_sources"]          # and FashionMnist, on first use

_INT32_MAX = int(np.iinfo(np.int32).max)


def __getattr__(name):
    """`data.FashionMnist`: `dataset.FashionMnist`, the tfds builder, defined on first use."""
    if name == "FashionMnist":
        return dataset.FashionMnist
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")


def num_batches(n: int, batch_size: int, train: bool) -> int:
    """Batches in one epoch of n examples: n // batch_size in training (the remainder is
    dropped), ceil(n / batch_size) in evaluation (the last batch is padded). ``ValueError``
    when that is no batch."""
    _check_batch_size(batch_size)
    if train and n < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples: no batch")
    if n == 0:
        raise ValueError("no examples to evaluate: no batch")
    return n // batch_size if train else -(-n // batch_size)


def _check_labels(labels, n, num_classes) -> np.ndarray:
    """labels as int32 [n], refusing what int32 class indices cannot be (num_classes: the
    bound, when given)."""
    if labels.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},) for {n} images; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"expected integer class labels; got dtype {labels.dtype}")
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, Integral) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    top = _INT32_MAX if num_classes is None else int(num_classes) - 1
    if n and (labels.min() < 0 or labels.max() > top):
        index = int(np.flatnonzero((labels < 0) | (labels > top))[0])
        bound = (f"0..{top} (num_classes {num_classes})" if num_classes is not None
                 else f"0..{top} (int32)")
        raise ValueError(f"expected class labels in {bound}; got {labels[index]} at index "
                         f"{index}")
    return labels.astype(np.int32)


def _rows(rows, batch_size) -> range:
    """The row positions rows (a contiguous slice, or None: all) selects in a batch."""
    if rows is None:
        return range(batch_size)
    if not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice of a batch's rows, such as "
                        f"parallel.process_slice(batch_size); got {rows!r}")
    positions = range(batch_size)[rows]
    if positions.step != 1 or not positions:
        raise ValueError(f"rows must select a contiguous, non-empty part of a batch of "
                         f"{batch_size}; got {rows}")
    return positions


def batches(images, labels, batch_size: int, *, seed: int = 0, epoch: int = 0, train: bool,
            rows: slice | None = None, num_classes: int | None = None):
    """Iterator of {'image': [R, ...] like images, 'label': int32 [R], 'mask': bool [R]}, R the
    number of rows taken of each batch of batch_size (all of them by default).

    train: examples shuffled by `np.random.default_rng([seed, epoch])` (so any epoch's order
    is reproducible alone), then cut into full batches; the remainder is dropped; mask all True.
    Otherwise (seed and epoch unused): every example exactly once, in order; the last batch is
    padded with zeros and its padded rows have mask False.

    rows: a contiguous slice of each batch's rows, e.g. ``parallel.process_slice(batch_size)``
    in a multi-process run: only those rows are gathered; they are the rows the whole batch has
    there (the shuffle, padding and mask are the whole batch's), so the processes' parts,
    concatenated, are the batches of one process.
    labels: integer class indices, refused (``ValueError``) below 0 or above int32's maximum,
    or, with num_classes, at num_classes or above.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    n = len(images)
    labels = _check_labels(labels, n, num_classes)
    num_batches(n, batch_size, train)           # raises if the split makes no batch
    part = _rows(rows, batch_size)
    if train:
        for name, value in (("seed", seed), ("epoch", epoch)):
            if not (isinstance(value, Integral) and value >= 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return _train_batches(images, labels, batch_size, part, seed, epoch)
    return _eval_batches(images, labels, batch_size, part)


def epoch_order(n: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """An epoch's training order: ``(n // batch_size, batch_size)`` example indices, row ``i``
    the examples of batch ``i`` of ``batches(..., seed=seed, epoch=epoch, train=True)``."""
    steps = n // batch_size
    return np.random.default_rng([seed, epoch]).permutation(n)[:steps * batch_size].reshape(
        steps, batch_size)


def _train_batches(images, labels, batch_size, part, seed, epoch):
    for idx in epoch_order(len(images), batch_size, seed=seed, epoch=epoch)[:, part]:
        yield {"image": images[idx], "label": labels[idx], "mask": np.ones(len(part), bool)}


def _eval_batches(images, labels, batch_size, part):
    for start in range(0, len(images), batch_size):
        first = start + part.start
        valid = max(0, min(len(part), len(images) - first))
        yield {"image": _pad(images[first:first + valid], len(part)),
               "label": _pad(labels[first:first + valid], len(part)),
               "mask": np.arange(len(part)) < valid}


def _pad(x, size):
    """x [k, ...] zero-padded to [size, ...] along axis 0."""
    return np.pad(x, [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1))


def preprocess(images, image_size: int) -> jax.Array:
    """Integer images [B, H, W, C] in 0-255 (uint8, as `fashion_mnist` gives) -> float32
    [B, S, S, C] in [0, 1], S = image_size (static).

    x / 255 as the book's ToTensor (no mean/std standardization), then, when S differs from
    the input size, bilinear resize as the book's torchvision Resize. Pure jnp: call it inside
    the jitted step, so the host moves only uint8 28x28 images. Pixel values outside 0-255 (in
    a wider integer type) are refused (``ValueError``) when the values are known, that is
    outside jit; traced inside jit they are clipped to 0-255.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < 1:
        raise ValueError(f"preprocess: image_size must be a positive int, got {image_size!r}")
    images = images if isinstance(images, jax.Array) else np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"preprocess expects images in NHWC layout (batch, height, width, "
                         f"channels); got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise TypeError(f"preprocess expects integer images in 0-255 (uint8, as "
                        f"data.fashion_mnist gives) and divides them by 255; got dtype "
                        f"{images.dtype}")
    if images.dtype != np.uint8:
        if isinstance(images, jax.core.Tracer):
            images = jnp.clip(images, 0, 255)
        elif images.size and not 0 <= images.min() <= images.max() <= 255:
            raise ValueError(f"preprocess expects pixel values in 0-255; got {images.dtype} "
                             f"values from {images.min()} to {images.max()}")
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    b, h, w, c = x.shape
    if (h, w) == (image_size, image_size):
        return x
    return jax.image.resize(x, (b, image_size, image_size, c), method="bilinear")
