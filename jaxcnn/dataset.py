"""Fashion-MNIST: its source files, a tensorflow-datasets builder (without TensorFlow), and the
decoded cache that later loads read.

Sources are the four original IDX `.gz` files, taken from `data_dir` (the CLI's `--data-dir`)
or `$JAXCNN_FASHION_MNIST` alone when given, else from tfds's manual dir, else from Debian's
`dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`), else downloaded with tfds's
`DownloadManager`. Each is checked (IDX header and SHA-256 of its decompressed content)
before anything is written. The builder `FashionMnist` (registered in tfds as
`jaxcnn_fashion_mnist` on first use) prepares them to `array_record`; `tfds.data_source` reads
them back; the decoded split, compared with the checked sources, is cached as `SPLIT.npz`
beside the prepared dataset.

The cache is tied to its sources: it records the SHA-256 digests it was built from and the
(path, size, mtime) of the files found to hold them. Each load looks the split's sources up as
preparing would (a few `stat` calls); a file not seen before is read and checked again (a
corrupt one is a `DataError`), so a changed or newly given source is always checked. A cache
that cannot be read is rebuilt, with a warning naming it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import socket
import sys
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.files import atomic_write

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
_SEEN_KEPT = 8     # file identities a cache remembers per source (other dirs, copies, touches)


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


def _check_data_dir(data_dir, manual_dir) -> None:
    """MissingSourceError unless data_dir is None or names an existing directory."""
    if data_dir is None:
        return
    path = Path(data_dir).expanduser()
    if not os.fspath(data_dir):
        problem = "the data directory is '' (empty): name a directory, or give none"
    elif path.is_file():
        problem = f"the data directory {data_dir} is a file, not a directory"
    elif not path.is_dir():
        problem = f"the data directory {data_dir} does not exist"
    else:
        return
    raise _error(MissingSourceError, list(_SHA256), problem, manual_dir)


def _locate(source_dir, manual_dir, names) -> dict:
    """{name: path of name.gz} of the names found on disk, without downloading: in source_dir
    (or $JAXCNN_FASHION_MNIST) alone when given (MissingSourceError for any not there), else
    per file in the manual dir, then Debian's dir."""
    given = source_dir or os.environ.get(ENV_VAR)
    dirs = [Path(given).expanduser()] if given else [Path(manual_dir), DEBIAN_DIR]
    paths = {}
    for name in names:
        found = [d / f"{name}.gz" for d in dirs if (d / f"{name}.gz").is_file()]
        if found:
            paths[name] = found[0]
    missing = [name for name in names if name not in paths]
    if missing and given:
        raise _error(MissingSourceError, missing, f"not found in {given}", manual_dir)
    return paths


def _find_sources(source_dir, manual_dir, download_dir, names=tuple(_SHA256)) -> dict:
    """{name: path of name.gz} for every name: found by `_locate`, else downloaded."""
    paths = _locate(source_dir, manual_dir, names)
    missing = [name for name in names if name not in paths]
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


def _shapes(split) -> dict:
    """{name: IDX shape} of split's two files."""
    images, labels, n = _FILES[split]
    return {images: (n, 28, 28), labels: (n,)}


def _read_split(paths, split, manual_dir) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of split from {name: path}, checked."""
    images, labels = (_read_idx(paths[name], name, shape, manual_dir)
                      for name, shape in _shapes(split).items())
    return images[..., None], labels.astype(np.int32)


def read_sources(data_dir=None, *, tfds_data_dir=None) -> dict:
    """The four source files read and checked, without tfds's prepared dataset:
    {'train': (images uint8 [60000, 28, 28, 1], labels int32 [60000]), 'test': (... 10000 ...)}.

    data_dir: directory of the .gz files (else $JAXCNN_FASHION_MNIST, tfds's manual dir
    TFDS_DATA_DIR/downloads/manual, Debian's dir, a download). Raises DataError.
    """
    downloads = _tfds_root(tfds_data_dir) / "downloads"
    paths = _find_sources(data_dir, downloads / "manual", downloads)
    return {split: _read_split(paths, split, downloads / "manual") for split in SPLITS}


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
            self._source_paths = {}

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

        def is_prepared(self):
            """tfds's test, without its warning that a dataset not yet prepared has no
            dataset_info.json."""
            return self.data_path.exists() and super().is_prepared()

        def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
            """Reads and checks the four source files before tfds writes anything, then lets
            tfds prepare (into a temporary dir renamed when complete)."""
            if not self.data_path.exists():  # the test tfds itself uses to prepare
                downloads = Path(os.fspath(download_dir or self.data_dir_root / "downloads"))
                manual = getattr(download_config, "manual_dir", None) or downloads / "manual"
                self._source_paths = _find_sources(self._source_dir, manual, downloads)
                self._sources = {split: _read_split(self._source_paths, split, manual)
                                 for split in SPLITS}
            try:
                super().download_and_prepare(
                    download_dir=download_dir, download_config=download_config, **kwargs)
            finally:
                self._sources = None

        def _log_download_bytes(self):
            """One line instead of tfds's "Downloading and preparing dataset Unknown size"."""
            origin = ", ".join(sorted({str(p.parent) for p in self._source_paths.values()}))
            print(f"Preparing Fashion-MNIST (once) from the checked files in {origin} into "
                  f"{self.data_dir}", file=sys.stderr)

        def _log_download_done(self):
            """Nothing: `_log_download_bytes` said what happens."""

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(*arrays)
                    for split, arrays in self._sources.items()}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield i, {"image": image, "label": label}

    return FashionMnist


def __getattr__(name):
    """`FashionMnist`, the tfds builder class, defined on first access (PEP 562)."""
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


# ---------------------------------------------------------------------------- the cache

def cache_path(split, *, tfds_data_dir=None) -> Path:
    """Where the decoded split is cached: beside the prepared dataset, as SPLIT.npz."""
    return _tfds_root(tfds_data_dir) / TFDS_NAME / TFDS_VERSION / f"{split}.npz"


def _identity(path) -> list:
    """[resolved path, size, mtime_ns]: what a cache compares to know a file it has seen."""
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _identities(seen) -> bool:
    """Whether seen is a list of `_identity` values, as JSON gives them back."""
    return isinstance(seen, list) and all(
        isinstance(i, list) and len(i) == 3 and isinstance(i[0], str)
        and all(isinstance(v, int) for v in i[1:]) for i in seen)


def _record(paths) -> dict:
    """The cache's record of its checked sources {name: path}: their digests and identities."""
    return {name: {"sha256": _SHA256[name], "seen": [_identity(path)]}
            for name, path in paths.items()}


def _save_cache(path, images, labels, record) -> None:
    """Writes the cache atomically; warns if it can't (the cache only saves time)."""
    try:
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels,
                                              sources=np.array(json.dumps(record))))
    except OSError as e:
        warnings.warn(f"Fashion-MNIST cache {path} not written: {e}", stacklevel=3)


def _problem(images, labels, record, split) -> str | None:
    """What is wrong with a cache's content for split, or None."""
    n = _FILES[split][2]
    if (images.shape, images.dtype, labels.shape, labels.dtype) != (
            (n, 28, 28, 1), np.uint8, (n,), np.int32):
        return (f"holds images {images.shape} {images.dtype} and labels {labels.shape} "
                f"{labels.dtype}; expected ({n}, 28, 28, 1) uint8 and ({n},) int32")
    names = _shapes(split)
    if not (isinstance(record, dict) and set(record) == set(names)
            and all(isinstance(record[name], dict) and record[name].get("sha256") == _SHA256[name]
                    and _identities(record[name].get("seen")) for name in names)):
        return f"records other sources than {', '.join(f'{name}.gz' for name in names)}"
    return None


class _CacheProblem(Exception):
    """What makes a readable file no cache of this jaxcnn."""


def _load_npz(path):
    """(images, labels, record) of the .npz at path. Raises what np.load and zipfile raise for
    a bad file (a truncated zip, a bad CRC, garbage), or _CacheProblem."""
    with open(path, "rb") as file:           # ours: np.load leaks a path's file on errors
        f = np.load(file)                    # allow_pickle=False: no pickle is ever run
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise _CacheProblem("is not an .npz archive")
        if "sources" not in f.files:
            raise _CacheProblem("records no sources (written by an older jaxcnn)")
        return f["images"], f["labels"], json.loads(str(f["sources"][()]))


def _read_cache(path, split):
    """(images, labels, record) of the cache at path; None when there is none, or (with a
    warning naming it) when it is broken, so that it is rebuilt."""
    if not os.path.lexists(path):
        return None
    try:
        images, labels, record = _load_npz(path)
        problem = _problem(images, labels, record, split)
    except (OSError, EOFError, KeyError, ValueError, NotImplementedError, zlib.error,
            zipfile.BadZipFile) as e:
        problem = f"is unreadable ({type(e).__name__}: {e})"
    except _CacheProblem as e:
        problem = str(e)
    if problem is None:
        return images, labels, record
    warnings.warn(f"Fashion-MNIST cache {path} {problem}: rebuilding it from the sources",
                  stacklevel=3)
    return None


def _checked_record(record, split, source_dir, manual_dir) -> dict:
    """record, with the identity of any source file found now that it has not seen, once that
    file is checked to hold the recorded content (`DataError` if it does not). The split's
    sources are looked up as preparing would, without downloading, and else at the paths the
    record has seen; none found anywhere leaves the cache (checked when built) standing in."""
    found = _locate(source_dir, manual_dir, _shapes(split))
    record = {name: dict(entry) for name, entry in record.items()}
    for name, shape in _shapes(split).items():
        seen = record[name]["seen"]
        path = found.get(name) or next((Path(p) for p, *_ in seen if Path(p).is_file()), None)
        if path is None or _identity(path) in seen:
            continue
        _read_idx(path, name, shape, manual_dir)
        record[name]["seen"] = [_identity(path), *seen][:_SEEN_KEPT]
    return record


def fashion_mnist(split: str, data_dir=None, *, tfds_data_dir=None):
    """(images uint8 np.ndarray [N, 28, 28, 1], labels int32 np.ndarray [N]) of split 'train'
    (N = 60000) or 'test' (N = 10000), in the original IDX order.

    data_dir: directory of the source .gz files (see `read_sources`). tfds_data_dir: tfds's
    data dir holding the prepared dataset (else $TFDS_DATA_DIR, else ~/tensorflow_datasets).
    The first call checks the sources, prepares the dataset, and caches the split; later calls
    read the cache after looking the sources up (see the module's docstring). Raises DataError.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _tfds_root(tfds_data_dir)
    downloads = root / "downloads"
    _check_data_dir(data_dir, downloads / "manual")
    cache = cache_path(split, tfds_data_dir=root)
    cached = _read_cache(cache, split)
    if cached is not None:
        images, labels, record = cached
        checked = _checked_record(record, split, data_dir, downloads / "manual")
        if checked != record:
            _save_cache(cache, images, labels, checked)
        return images, labels
    paths = _find_sources(data_dir, downloads / "manual", downloads, names=tuple(_shapes(split)))
    sources = _read_split(paths, split, downloads / "manual")
    images, labels = _decode(split, data_dir, root)
    if not (np.array_equal(images, sources[0]) and np.array_equal(labels, sources[1])):
        raise DataError(f"the prepared Fashion-MNIST in {cache.parent} differs from the checked "
                        f"source files in {paths[_FILES[split][0]].parent}: delete "
                        f"{cache.parent} to prepare it again")
    _save_cache(cache, images, labels, _record(paths))
    return images, labels
