"""Fashion-MNIST through tensorflow-datasets without TensorFlow, and the batch iterator.

Sources are the four original IDX `.gz` files, taken from `data_dir` (the CLI's `--data-dir`)
or `$JAXCNN_FASHION_MNIST` alone when given, else from tfds's manual dir, else from Debian's
`dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`), else downloaded with tfds's
`DownloadManager`. Each is checked (IDX header and SHA-256 of its decompressed content)
before anything is written. The builder `FashionMnist` (registered in tfds as
`jaxcnn_fashion_mnist` on first use) prepares them to `array_record`; `tfds.data_source` reads
them back; the decoded split is cached as `SPLIT.npz` beside the prepared dataset.

The host moves only uint8 images [B, 28, 28, 1]; `preprocess` scales and resizes them on the
device inside the jitted step.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import socket
import urllib.parse
import urllib.request
import warnings
import zlib
from numbers import Integral
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.report import atomic_write

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")
SPLITS = ("train", "test")
TFDS_NAME = "jaxcnn_fashion_mnist"
TFDS_VERSION = "1.0.0"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "JAXCNN_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# split -> (images file, labels file, number of examples); files are named FILE.gz.
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000)}
# SHA-256 of the decompressed IDX content (Debian's re-gzipped files have the same).
_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class DataError(ValueError):
    """A Fashion-MNIST source file is corrupt or missing; the message says how to provide it."""


class MissingSourceError(DataError, FileNotFoundError):
    """A Fashion-MNIST source file is missing."""


def _error(cls, files, problem, manual_dir):
    """cls with a message naming the file(s), the problem and the three ways to provide them."""
    return cls(
        f"Fashion-MNIST source {', '.join(f'{f}.gz' for f in files)}: {problem}.\n"
        f"Provide the four original files ({', '.join(f'{f}.gz' for f in _SHA256)}) by one of:\n"
        f"  - `--data-dir DIR` (data_dir=DIR) or the environment variable {ENV_VAR}=DIR;\n"
        f"  - tfds's manual dir {manual_dir};\n"
        f"  - `apt-get install dataset-fashion-mnist` (installs them in {DEBIAN_DIR}).")


def _tfds_root(tfds_data_dir=None) -> Path:
    """tfds's data dir: tfds_data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (as tfds)."""
    return Path(tfds_data_dir or os.environ.get("TFDS_DATA_DIR")
                or Path.home() / "tensorflow_datasets").expanduser()


def _online(url) -> bool:
    """Whether url's host takes a connection within 10 s (offline, tfds retries for minutes)."""
    if urllib.request.getproxies().get("http"):
        return True
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=10).close()
    except OSError:
        return False
    return True


def _download(names, download_dir, manual_dir) -> dict:
    """{name: path} of the files names fetched from URL by tfds's DownloadManager."""
    where = f"not in {manual_dir} nor in {DEBIAN_DIR}"
    if not _online(URL):
        raise _error(MissingSourceError, names, f"{where}, and {URL} cannot be reached", manual_dir)
    import tensorflow_datasets as tfds
    manager = tfds.download.DownloadManager(download_dir=download_dir)
    try:
        paths = manager.download({name: f"{URL}{name}.gz" for name in names})
    except Exception as e:  # tfds and requests raise many kinds; all mean "not downloaded"
        raise _error(MissingSourceError, names, f"{where}, and downloading failed: {e}",
                     manual_dir) from e
    return {name: Path(os.fspath(path)) for name, path in paths.items()}


def _find_sources(source_dir, manual_dir, download_dir) -> dict:
    """{name: path of name.gz}: from source_dir (or $JAXCNN_FASHION_MNIST) alone when given,
    else per file from the manual dir, Debian's dir, or a download."""
    given = source_dir or os.environ.get(ENV_VAR)
    dirs = [Path(given).expanduser()] if given else [Path(manual_dir), DEBIAN_DIR]
    paths = {}
    for name in _SHA256:
        found = [d / f"{name}.gz" for d in dirs if (d / f"{name}.gz").is_file()]
        if found:
            paths[name] = found[0]
    missing = [name for name in _SHA256 if name not in paths]
    if missing and given:
        raise _error(MissingSourceError, missing, f"not found in {given}", manual_dir)
    if missing:
        paths.update(_download(missing, download_dir, manual_dir))
    return paths


def _read_idx(path, name, shape, manual_dir) -> np.ndarray:
    """The uint8 array of the IDX file path (gzip), checked against shape and its SHA-256."""
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise _error(DataError, [name], f"{path} is not a readable gzip file ({e})",
                     manual_dir) from e
    head = 4 * (1 + len(shape))
    expected = (0x800 + len(shape), *shape, math.prod(shape))
    header = np.frombuffer(raw[:head].ljust(head, b"\0"), ">u4")
    found = (*(int(v) for v in header), len(raw) - head)
    if found != expected:
        raise _error(DataError, [name], f"{path} has IDX magic {found[0]:#010x}, dims "
                     f"{found[1:-1]} and {found[-1]} data bytes; expected magic "
                     f"{expected[0]:#010x}, dims {shape} and {expected[-1]} data bytes", manual_dir)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _SHA256[name]:
        raise _error(DataError, [name], f"{path} decompresses to content with SHA-256 {digest}; "
                     f"expected {_SHA256[name]}", manual_dir)
    return np.frombuffer(raw, np.uint8, offset=head).reshape(shape)


def _read_sources(source_dir, manual_dir, download_dir) -> dict:
    """{split: (images uint8 [N, 28, 28, 1], labels int32 [N])} in IDX order, all four checked."""
    paths = _find_sources(source_dir, manual_dir, download_dir)
    return {split: (_read_idx(paths[images], images, (n, 28, 28), manual_dir)[..., None],
                    _read_idx(paths[labels], labels, (n,), manual_dir).astype(np.int32))
            for split, (images, labels, n) in _FILES.items()}


def read_sources(data_dir=None, *, tfds_data_dir=None) -> dict:
    """The four source files read and checked, without tfds's prepared dataset:
    {'train': (images uint8 [60000, 28, 28, 1], labels int32 [60000]), 'test': (... 10000 ...)}.

    data_dir: directory of the .gz files (else $JAXCNN_FASHION_MNIST, tfds's manual dir
    TFDS_DATA_DIR/downloads/manual, Debian's dir, a download). Raises DataError.
    """
    downloads = _tfds_root(tfds_data_dir) / "downloads"
    return _read_sources(data_dir, downloads / "manual", downloads)


@functools.cache
def _builder_class():
    """Defines (and so registers in tfds) the builder; tfds is imported here, on first use."""
    import tensorflow_datasets as tfds

    class FashionMnist(tfds.core.GeneratorBasedBuilder):
        """Fashion-MNIST from the IDX files to array_record, in IDX order, without TensorFlow.

        Features: 'image' uint8 [28, 28, 1] (raw bytes, no PNG), 'label' ClassLabel(CLASS_NAMES).
        source_dir: directory of the .gz files (see `read_sources`).
        """

        name = TFDS_NAME
        VERSION = tfds.core.Version(TFDS_VERSION)
        RELEASE_NOTES = {TFDS_VERSION: "The original IDX files, stored as raw uint8 tensors."}

        def __init__(self, *, source_dir=None, file_format="array_record", **kwargs):
            super().__init__(file_format=file_format, **kwargs)
            self._source_dir = source_dir
            self._sources = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Fashion-MNIST (Zalando Research): 28x28 grey images, 10 classes.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES)}),
                supervised_keys=("image", "label"),
                homepage="https://github.com/zalandoresearch/fashion-mnist",
                disable_shuffling=True)

        def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
            """Reads and checks the four source files before tfds writes anything, then lets
            tfds prepare (into a temporary dir renamed when complete)."""
            if not self.data_path.exists():  # the test tfds itself uses to prepare
                downloads = Path(os.fspath(download_dir or self.data_dir_root / "downloads"))
                manual = getattr(download_config, "manual_dir", None) or downloads / "manual"
                self._sources = _read_sources(self._source_dir, manual, downloads)
            try:
                super().download_and_prepare(
                    download_dir=download_dir, download_config=download_config, **kwargs)
            finally:
                self._sources = None

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(*arrays)
                    for split, arrays in self._sources.items()}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield i, {"image": image, "label": label}

    return FashionMnist


def __getattr__(name):
    """`data.FashionMnist`, the tfds builder class, defined on first access (PEP 562)."""
    if name == "FashionMnist":
        return _builder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _decode(split, source_dir, root):
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of split via tfds.data_source,
    preparing the dataset first if needed."""
    import tensorflow_datasets as tfds
    _builder_class()
    source = tfds.data_source(TFDS_NAME, split=split, data_dir=root,
                              builder_kwargs={"source_dir": source_dir})
    examples = source.__getitems__(list(range(len(source))))
    return (np.stack([e["image"] for e in examples]),
            np.array([e["label"] for e in examples], np.int32))


def _save_npz(path, **arrays):
    """Writes arrays to path atomically (``report.atomic_write``); warns if it can't: the cache
    only saves time."""
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        warnings.warn(f"Fashion-MNIST cache {path} not written: {e}", stacklevel=3)


def cache_path(split, *, tfds_data_dir=None) -> Path:
    """Where the decoded split is cached: beside the prepared dataset, as SPLIT.npz."""
    return _tfds_root(tfds_data_dir) / TFDS_NAME / TFDS_VERSION / f"{split}.npz"


def fashion_mnist(split: str, data_dir=None, *, tfds_data_dir=None):
    """(images uint8 np.ndarray [N, 28, 28, 1], labels int32 np.ndarray [N]) of split 'train'
    (N = 60000) or 'test' (N = 10000), in the original IDX order.

    data_dir: directory of the source .gz files (see `read_sources`); used only to prepare.
    tfds_data_dir: tfds's data dir holding the prepared dataset (else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets). The first call prepares and decodes; later calls read the cache.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _tfds_root(tfds_data_dir)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise _error(MissingSourceError, list(_SHA256), f"the data directory {data_dir} does "
                     "not exist", root / "downloads" / "manual")
    cache = cache_path(split, tfds_data_dir=root)
    if cache.is_file():
        with np.load(cache) as f:
            return f["images"], f["labels"]
    images, labels = _decode(split, data_dir, root)
    _save_npz(cache, images=images, labels=labels)
    return images, labels


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


def batches(images, labels, batch_size: int, *, seed: int = 0, epoch: int = 0, train: bool):
    """Iterator of {'image': [B, ...] like images, 'label': int32 [B], 'mask': bool [B]}.

    train: examples shuffled by `np.random.default_rng([seed, epoch])` (so any epoch's order
    is reproducible alone), then cut into full batches; the remainder is dropped; mask all True.
    Otherwise (seed and epoch unused): every example exactly once, in order; the last batch is
    padded with zeros and its padded rows have mask False.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    n = len(images)
    if labels.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},) for {n} images; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"expected integer class labels; got dtype {labels.dtype}")
    num_batches(n, batch_size, train)           # raises if the split makes no batch
    labels = labels.astype(np.int32)
    if train:
        for name, value in (("seed", seed), ("epoch", epoch)):
            if not (isinstance(value, Integral) and value >= 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return _train_batches(images, labels, batch_size, np.random.default_rng([seed, epoch]))
    return _eval_batches(images, labels, batch_size)


def _train_batches(images, labels, batch_size, rng):
    order = rng.permutation(len(images))
    for i in range(len(images) // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield {"image": images[idx], "label": labels[idx], "mask": np.ones(batch_size, bool)}


def _eval_batches(images, labels, batch_size):
    for start in range(0, len(images), batch_size):
        valid = min(batch_size, len(images) - start)
        yield {"image": _pad(images[start:start + valid], batch_size),
               "label": _pad(labels[start:start + valid], batch_size),
               "mask": np.arange(batch_size) < valid}


def _pad(x, size):
    """x [k, ...] zero-padded to [size, ...] along axis 0."""
    return np.pad(x, [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1))


def preprocess(images, image_size: int) -> jax.Array:
    """uint8 (or other integer) images [B, H, W, C] in 0-255 -> float32 [B, S, S, C] in [0, 1],
    S = image_size (static).

    x / 255 as the book's ToTensor (no mean/std standardization), then, when S differs from
    the input size, bilinear resize as the book's torchvision Resize. Pure jnp: call it inside
    the jitted step, so the host moves only uint8 28x28 images.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < 1:
        raise ValueError(f"preprocess: image_size must be a positive int, got {image_size!r}")
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"preprocess expects images in NHWC layout (batch, height, width, "
                         f"channels); got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise TypeError(f"preprocess expects integer images in 0-255 (uint8, as "
                        f"data.fashion_mnist gives) and divides them by 255; got dtype "
                        f"{images.dtype}")
    x = images.astype(jnp.float32) / 255.0
    b, h, w, c = x.shape
    if (h, w) == (image_size, image_size):
        return x
    return jax.image.resize(x, (b, image_size, image_size, c), method="bilinear")
