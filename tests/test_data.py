"""jaxcnn.data on the real Fashion-MNIST files ($JAXCNN_FASHION_MNIST, else Debian's package).

The dataset is prepared once per session into a fresh tfds data dir; the error paths copy the
real files into tmp_path, break the copies there and prepare into another fresh tfds data dir.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn import data, dataset

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REPO = Path(__file__).resolve().parents[1]
# SHA-256 of the decompressed t10k-images-idx3-ubyte (Fashion-MNIST's published files).
T10K_IMAGES_SHA256 = "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The directory of the four real .gz files."""
    for d in (os.environ.get(data.ENV_VAR), data.DEBIAN_DIR):
        if d and all((Path(d) / f"{name}.gz").is_file() for name in NAMES):
            return Path(d)
    pytest.fail(f"no Fashion-MNIST files: set {data.ENV_VAR} or install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, real_dir):
    """A fresh tfds data dir with the dataset prepared from the real files (both splits cached),
    with what the preparation printed (stdout and stderr) and logged through absl."""
    root = tmp_path_factory.mktemp("tfds")
    printed, logged = io.StringIO(), []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("absl").addHandler(handler)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            for split in data.SPLITS:
                data.fashion_mnist(split, real_dir, tfds_data_dir=root)
    finally:
        logging.getLogger("absl").removeHandler(handler)
    return root, printed.getvalue(), logged


@pytest.fixture(scope="session")
def tfds_dir(prepared) -> Path:
    return prepared[0]


@pytest.fixture(scope="session")
def fmnist_train(tfds_dir):
    return data.fashion_mnist("train", tfds_data_dir=tfds_dir)


@pytest.fixture(scope="session")
def fmnist_test(tfds_dir):
    return data.fashion_mnist("test", tfds_data_dir=tfds_dir)


# ---------------------------------------------------------------------------- the dataset

def test_counts_shapes_and_classes(fmnist_train, fmnist_test):
    for (images, labels), n in ((fmnist_train, 60_000), (fmnist_test, 10_000)):
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
    assert data.CLASS_NAMES == ("t-shirt", "trouser", "pullover", "dress", "coat",
                                "sandal", "shirt", "sneaker", "bag", "ankle boot")


def test_training_pixel_statistics(fmnist_train):
    images = fmnist_train[0]
    assert images.min() == 0 and images.max() == 255
    assert images.mean(dtype=np.float64) / 255 == pytest.approx(0.2860, abs=5e-5)
    assert images.std(dtype=np.float64) / 255 == pytest.approx(0.3530, abs=5e-5)


def test_same_examples_in_the_same_order_as_the_source_files(real_dir, fmnist_train, fmnist_test):
    sources = data.read_sources(real_dir)
    for split, (images, labels) in (("train", fmnist_train), ("test", fmnist_test)):
        np.testing.assert_array_equal(images, sources[split][0])
        np.testing.assert_array_equal(labels, sources[split][1])


def test_prepared_as_array_record_read_by_data_source_without_tensorflow(tfds_dir):
    import tensorflow_datasets as tfds

    variant = tfds_dir / data.TFDS_NAME / data.TFDS_VERSION
    for split in data.SPLITS:
        assert list(variant.glob(f"{data.TFDS_NAME}-{split}.array_record-*"))
        assert data.cache_path(split, tfds_data_dir=tfds_dir).is_file()
    assert not [p for p in tfds_dir.rglob("*") if "incomplete" in p.name or p.suffix == ".tmp"]
    source = tfds.data_source(data.TFDS_NAME, split="test", data_dir=tfds_dir, download=False)
    assert len(source) == 10_000
    example = source[0]
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
    features = source.dataset_info.features
    assert isinstance(features["image"], tfds.features.Tensor)  # raw bytes, no PNG to decode
    assert features["label"].names == list(data.CLASS_NAMES)
    assert "tensorflow" not in sys.modules


def test_preparation_says_what_it_does_in_one_line(prepared, real_dir):
    _, printed, logged = prepared
    said = [line for line in printed.splitlines() if "Fashion-MNIST" in line]
    assert said == [f"Preparing Fashion-MNIST (once) from the checked files in {real_dir} into "
                    f"{prepared[0] / data.TFDS_NAME / data.TFDS_VERSION}"]
    assert "download" not in printed.lower()          # tfds's "Downloading and preparing ..."
    assert not [m for m in logged if "dataset_info.json" in m], logged


def test_second_start_reads_the_cache_without_tfds_or_the_sources(tfds_dir):
    code = ("import sys; from jaxcnn import data, dataset\n"
            "def fail(*args): raise AssertionError('not from the cache')\n"
            "dataset._decode = dataset._read_idx = fail\n"
            f"data.fashion_mnist('train', tfds_data_dir={str(tfds_dir)!r})\n"
            f"data.fashion_mnist('test', tfds_data_dir={str(tfds_dir)!r})\n"
            "print('tensorflow_datasets' in sys.modules)")
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"]  # the cache needs neither tfds nor decoding


def test_bad_split_lists_the_valid_ones(tfds_dir):
    with pytest.raises(ValueError, match="'train', 'test'"):
        data.fashion_mnist("validation", tfds_data_dir=tfds_dir)


# ---------------------------------------------------------------------------- broken sources

@pytest.fixture
def source_copy(tmp_path, real_dir) -> Path:
    """A copy of the four real files, to break."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in NAMES:
        shutil.copy(real_dir / f"{name}.gz", copy)
    return copy


def _regzip(path: Path, content: bytes, **gzip_args):
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", **gzip_args) as f:
        f.write(content)


def _flip_pixel_byte(content: bytes) -> bytes:
    return content[:1000] + bytes([content[1000] ^ 0xFF]) + content[1001:]


def _wrong_count(content: bytes) -> bytes:
    return content[:4] + (9_999).to_bytes(4, "big") + content[8:]


def _assert_nothing_written(root: Path):
    assert not root.exists() or not any(root.iterdir()), sorted(root.rglob("*"))


def _assert_says_how_to_provide(message: str):
    for way in ("--data-dir", data.ENV_VAR, "manual dir", "apt-get install dataset-fashion-mnist"):
        assert way in message


@pytest.mark.parametrize("name, corrupt, found", [
    ("t10k-images-idx3-ubyte", _flip_pixel_byte, "SHA-256"),
    ("t10k-labels-idx1-ubyte", _wrong_count, "dims (9999,)"),
    ("train-labels-idx1-ubyte", None, "not a readable gzip file"),
])
def test_corrupt_file_is_one_clear_error_and_nothing_is_prepared(
        source_copy, tmp_path, name, corrupt, found):
    path = source_copy / f"{name}.gz"
    content = gzip.decompress(path.read_bytes())
    if corrupt:
        _regzip(path, corrupt(content), compresslevel=1)
    else:
        path.write_bytes(content)  # not gzip at all
    with pytest.raises(data.DataError) as error:
        data.fashion_mnist("test", source_copy, tfds_data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert f"{name}.gz" in message and found in message and str(path) in message
    if corrupt is _flip_pixel_byte:  # the expected digest and the one found
        assert T10K_IMAGES_SHA256 in message and message.count("SHA-256") >= 1
    _assert_says_how_to_provide(message)
    _assert_nothing_written(tmp_path / "tfds")


def test_missing_file_is_one_clear_error_and_nothing_is_prepared(source_copy, tmp_path):
    (source_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.MissingSourceError) as error:
        data.fashion_mnist("train", source_copy, tfds_data_dir=tmp_path / "tfds")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    message = str(error.value)
    assert "train-labels-idx1-ubyte.gz" in message and str(source_copy) in message
    _assert_says_how_to_provide(message)
    _assert_nothing_written(tmp_path / "tfds")


def test_environment_variable_names_the_source_dir(source_copy, tmp_path, monkeypatch):
    (source_copy / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv(data.ENV_VAR, str(source_copy))
    with pytest.raises(data.MissingSourceError, match="t10k-images-idx3-ubyte.gz"):
        data.fashion_mnist("test", tfds_data_dir=tmp_path / "tfds")


def test_debian_style_regzipped_files_are_accepted(source_copy, fmnist_train):
    for name in NAMES:
        path = source_copy / f"{name}.gz"
        original = path.read_bytes()
        _regzip(path, gzip.decompress(original), compresslevel=1, mtime=1591347900,
                filename=f"debian/{name}")
        assert path.read_bytes() != original
    sources = data.read_sources(source_copy)
    np.testing.assert_array_equal(sources["train"][0], fmnist_train[0])
    np.testing.assert_array_equal(sources["train"][1], fmnist_train[1])


@pytest.fixture
def file_server(real_dir):
    """An HTTP server on 127.0.0.1 serving the real files; yields (url, requested paths)."""
    requested, directory = [], str(real_dir)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, format, *args):
            requested.append(self.path)

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_port}/", requested
        server.shutdown()


def test_manual_dir_first_then_download_with_tfds(
        file_server, real_dir, tmp_path, monkeypatch, fmnist_train):
    url, requested = file_server
    monkeypatch.setattr(dataset, "URL", url)
    monkeypatch.setattr(dataset, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    shutil.copy(real_dir / "train-images-idx3-ubyte.gz", manual)
    sources = data.read_sources(tfds_data_dir=tmp_path / "tfds")
    assert sorted(requested) == sorted(f"/{name}.gz" for name in NAMES[1:])
    np.testing.assert_array_equal(sources["train"][0], fmnist_train[0])
    np.testing.assert_array_equal(sources["train"][1], fmnist_train[1])


@pytest.mark.skipif(not data.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_package_files_are_accepted(fmnist_train):
    np.testing.assert_array_equal(data.read_sources(data.DEBIAN_DIR)["train"][1], fmnist_train[1])


def test_failed_prepare_leaves_no_dataset_behind(real_dir, tmp_path, monkeypatch):
    builder_class = data.FashionMnist
    generate = builder_class._generate_examples

    def fail_midway(self, images, labels):
        for i, example in generate(self, images, labels):
            if i == 1000:
                raise RuntimeError("interrupted")
            yield i, example

    monkeypatch.setattr(builder_class, "_generate_examples", fail_midway)
    root = tmp_path / "tfds"
    with pytest.raises(RuntimeError, match="interrupted"):
        data.fashion_mnist("test", real_dir, tfds_data_dir=root)
    builder = builder_class(data_dir=root)
    assert not builder.data_path.exists() and not builder.is_prepared()
    assert not data.cache_path("test", tfds_data_dir=root).exists()
    assert not [p for p in root.rglob("*") if p.is_file() or "incomplete" in p.name]


def test_killed_prepare_leaves_nothing_a_later_run_takes_for_a_dataset(real_dir, tmp_path):
    import tensorflow_datasets as tfds

    root = tmp_path / "tfds"
    code = f"from jaxcnn import data; data.fashion_mnist('test', {str(real_dir)!r}, " \
           f"tfds_data_dir={str(root)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(root.glob(f"{data.TFDS_NAME}/incomplete*/*.array_record*")):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert list(root.glob(f"{data.TFDS_NAME}/incomplete*"))  # killed while writing
    assert not data.FashionMnist(data_dir=root).is_prepared()
    assert not data.cache_path("test", tfds_data_dir=root).exists()
    with pytest.raises(KeyError, match="not been generated"):
        tfds.data_source(data.TFDS_NAME, split="test", data_dir=root, download=False)


# ---------------------------------------------------------------------------- the cache

@pytest.fixture
def prepared_copy(tmp_path, tfds_dir) -> Path:
    """A tfds data dir holding a copy of the prepared test split and its cache."""
    variant = Path(data.TFDS_NAME) / data.TFDS_VERSION
    (tmp_path / "tfds" / variant).mkdir(parents=True)
    for path in (tfds_dir / variant).iterdir():
        if "train" not in path.name:
            shutil.copy2(path, tmp_path / "tfds" / variant)
    return tmp_path / "tfds"


@pytest.fixture
def counted(monkeypatch):
    """The source files read (names) from now on; decoding the prepared dataset fails."""
    reads, read_idx = [], dataset._read_idx

    def read(path, *args):
        reads.append(Path(path).name)
        return read_idx(path, *args)

    def decode(*args):
        raise AssertionError("decoded the prepared dataset, not read the cache")

    monkeypatch.setattr(dataset, "_read_idx", read)
    monkeypatch.setattr(dataset, "_decode", decode)
    return reads


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _flip_middle_byte(content: bytes) -> bytes:
    middle = len(content) // 2
    return content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]


@pytest.mark.parametrize("breakage, found", [
    (lambda b: b[:len(b) // 2], "is unreadable (BadZipFile"),               # truncated
    (lambda b: b"\x80\x04garbage" * 100, "is unreadable (ValueError"),      # pickle-like bytes
    (_flip_middle_byte, "is unreadable (BadZipFile: Bad CRC-32"),
    (lambda b: _npz_bytes(images=np.zeros(1), sources=np.array("{}")), "is unreadable (KeyError"),
    (lambda b: _npz_bytes(images=np.zeros((10_000, 28, 28, 1), np.uint8),
                          labels=np.zeros(10_000, np.int32)), "records no sources"),
    (lambda b: b"\x93NUMPY" + b[8:], "is unreadable (ValueError"),
])
def test_a_broken_cache_is_rebuilt_with_a_warning_naming_it(prepared_copy, real_dir, fmnist_test,
                                                            breakage, found):
    cache = data.cache_path("test", tfds_data_dir=prepared_copy)
    cache.write_bytes(breakage(cache.read_bytes()))
    with pytest.warns(UserWarning) as warned:
        images, labels = data.fashion_mnist("test", real_dir, tfds_data_dir=prepared_copy)
    message = str(warned[0].message)
    assert f"Fashion-MNIST cache {cache} {found}" in message and "rebuilding it" in message
    np.testing.assert_array_equal(images, fmnist_test[0])
    np.testing.assert_array_equal(labels, fmnist_test[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # rebuilt: read without a word
        np.testing.assert_array_equal(data.fashion_mnist("test", real_dir,
                                                         tfds_data_dir=prepared_copy)[1], labels)


def test_a_cache_of_other_content_or_a_numpy_array_is_rebuilt(prepared_copy, real_dir,
                                                              fmnist_test):
    cache = data.cache_path("test", tfds_data_dir=prepared_copy)
    with np.load(cache) as f:
        sources = f["sources"]
    for content, found in ((_npz_bytes(images=fmnist_test[0][:5], labels=fmnist_test[1][:5],
                                       sources=sources), "holds images (5, 28, 28, 1) uint8"),
                           (_npz_bytes(images=fmnist_test[0], labels=fmnist_test[1],
                                       sources=np.array('{"x": 1}')), "records other sources")):
        cache.write_bytes(content)
        with pytest.warns(UserWarning, match=f"cache {cache} {re.escape(found)}"):
            labels = data.fashion_mnist("test", real_dir, tfds_data_dir=prepared_copy)[1]
        np.testing.assert_array_equal(labels, fmnist_test[1])
    np.save(cache.with_suffix(".npy"), fmnist_test[1])
    cache.with_suffix(".npy").rename(cache)
    with pytest.warns(UserWarning, match="is not an .npz archive"):
        data.fashion_mnist("test", real_dir, tfds_data_dir=prepared_copy)


def test_the_cache_checks_each_source_file_it_has_not_seen(prepared_copy, real_dir, source_copy,
                                                           fmnist_test, counted):
    test_files = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    data.fashion_mnist("test", real_dir, tfds_data_dir=prepared_copy)
    assert counted == []                                   # the files the cache was built from
    images, labels = data.fashion_mnist("test", source_copy, tfds_data_dir=prepared_copy)
    assert sorted(counted) == test_files                   # another dir: checked once
    np.testing.assert_array_equal(labels, fmnist_test[1])
    data.fashion_mnist("test", source_copy, tfds_data_dir=prepared_copy)
    data.fashion_mnist("test", real_dir, tfds_data_dir=prepared_copy)
    assert len(counted) == 2                               # both remembered
    stat = (source_copy / test_files[0]).stat()
    os.utime(source_copy / test_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data.fashion_mnist("test", source_copy, tfds_data_dir=prepared_copy)
    assert counted[2:] == [test_files[0]]                  # a touched file: checked again
    path = source_copy / test_files[1]
    _regzip(path, _wrong_count(gzip.decompress(path.read_bytes())))
    with pytest.raises(data.DataError, match=re.escape(f"{path} has IDX magic 0x00000801, "
                                                       f"dims (9999,)")):
        data.fashion_mnist("test", source_copy, tfds_data_dir=prepared_copy)
    path.unlink()
    with pytest.raises(data.MissingSourceError, match=f"{test_files[1]}: not found in "):
        data.fashion_mnist("test", source_copy, tfds_data_dir=prepared_copy)


def test_without_a_source_dir_the_cache_checks_the_files_it_was_built_from(
        prepared_copy, source_copy, fmnist_test, counted, monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(dataset, "DEBIAN_DIR", tmp_path / "no-debian")
    cache = data.cache_path("test", tfds_data_dir=prepared_copy)
    paths = {name: source_copy / f"{name}.gz" for name in NAMES[2:]}
    dataset._save_cache(cache, *fmnist_test, dataset._record(paths))   # built from the copy
    data.fashion_mnist("test", tfds_data_dir=prepared_copy)
    assert counted == []
    path = paths[NAMES[2]]
    _regzip(path, _flip_pixel_byte(gzip.decompress(path.read_bytes())), compresslevel=1)
    with pytest.raises(data.DataError, match=re.escape(f"{path} decompresses to content with")):
        data.fashion_mnist("test", tfds_data_dir=prepared_copy)
    shutil.rmtree(source_copy)          # no source anywhere: the cache, checked when built, serves
    np.testing.assert_array_equal(data.fashion_mnist("test", tfds_data_dir=prepared_copy)[1],
                                  fmnist_test[1])


# ---------------------------------------------------------------------------- batches

def _ids(batches) -> np.ndarray:
    return np.concatenate([b["image"][b["mask"]] for b in batches])


def test_num_batches():
    assert data.num_batches(60_000, 256, train=True) == 234
    assert data.num_batches(60_000, 256, train=False) == 235
    assert data.num_batches(10_000, 250, train=False) == 40
    assert data.num_batches(10_000, 10_000, train=True) == 1


def test_same_seed_same_order_new_epoch_new_order(fmnist_train):
    ids, labels = np.arange(len(fmnist_train[1])), fmnist_train[1]

    def order(seed, epoch):
        return _ids(data.batches(ids, labels, 256, seed=seed, epoch=epoch, train=True))

    np.testing.assert_array_equal(order(0, 3), order(0, 3))  # any epoch alone, e.g. on resume
    assert not np.array_equal(order(0, 3), order(0, 4))
    assert not np.array_equal(order(0, 3), order(1, 3))


def test_training_epoch_has_each_example_once_up_to_the_dropped_remainder(fmnist_train):
    images, labels = fmnist_train
    ids = np.arange(len(labels))
    epoch = list(data.batches(ids, labels, 256, seed=7, epoch=2, train=True))
    assert len(epoch) == data.num_batches(60_000, 256, train=True) == 234
    for batch in epoch:
        assert batch["image"].shape == (256,) and batch["label"].dtype == np.int32
        assert batch["mask"].dtype == bool and batch["mask"].all()
        np.testing.assert_array_equal(batch["label"], labels[batch["image"]])
    seen = _ids(epoch)
    assert len(np.unique(seen)) == len(seen) == 60_000 - 96
    first = next(data.batches(images, labels, 256, seed=7, epoch=2, train=True))
    assert first["image"].shape == (256, 28, 28, 1) and first["image"].dtype == np.uint8
    np.testing.assert_array_equal(first["image"], images[epoch[0]["image"]])


def test_evaluation_has_every_example_exactly_once_at_a_fixed_shape(fmnist_test):
    images, labels = fmnist_test
    ids = np.arange(len(labels))
    epoch = list(data.batches(ids, labels, 256, train=False))
    assert len(epoch) == data.num_batches(10_000, 256, train=False) == 40
    assert {b["image"].shape for b in epoch} == {(256,)}
    assert epoch[-1]["mask"].sum() == 10_000 - 39 * 256
    np.testing.assert_array_equal(_ids(epoch), ids)
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in epoch]), labels)
    last = list(data.batches(images, labels, 256, train=False))[-1]
    assert last["image"].shape == (256, 28, 28, 1) and last["label"].dtype == np.int32
    assert not last["image"][~last["mask"]].any()


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError),
                                               (2.5, TypeError), (True, TypeError)])
def test_bad_batch_size_is_rejected_at_the_call(fmnist_test, batch_size, error):
    with pytest.raises(error, match="batch_size"):
        data.batches(*fmnist_test, batch_size, train=False)
    with pytest.raises(error, match="batch_size"):
        data.num_batches(10_000, batch_size, train=True)


def test_batch_larger_than_training_set_or_mismatched_lengths_are_rejected(fmnist_test):
    images, labels = fmnist_test
    with pytest.raises(ValueError, match="no batch"):
        data.batches(images, labels, 10_001, seed=0, epoch=0, train=True)
    with pytest.raises(ValueError, match="batch_size 128 exceeds the 100 training examples"):
        data.num_batches(100, 128, train=True)
    with pytest.raises(ValueError, match="no examples to evaluate"):
        data.batches(images[:0], labels[:0], 32, train=False)
    assert len(list(data.batches(images, labels, 10_001, train=False))) == 1
    with pytest.raises(ValueError, match="labels"):
        data.batches(images, labels[:-1], 32, train=False)


def test_labels_that_are_no_class_index_are_refused(fmnist_test):
    images, labels = fmnist_test[0][:256], fmnist_test[1][:256].astype(np.int64)
    for value, index in ((-5, 7), (2**40, 200)):
        bad = labels.copy()
        bad[index] = value
        for train in (True, False):
            with pytest.raises(ValueError, match=re.escape(
                    f"expected class labels in 0..2147483647 (int32); got {value} at index "
                    f"{index}")):
                data.batches(images, bad, 128, train=train)
    bad = labels.copy()
    bad[3] = 10
    assert next(data.batches(images, bad, 128, train=False))["label"][3] == 10
    with pytest.raises(ValueError, match=re.escape("in 0..9 (num_classes 10); got 10 at index 3")):
        data.batches(images, bad, 128, train=True, num_classes=10)
    batch = next(data.batches(images, labels, 128, train=True, num_classes=10))
    assert batch["label"].dtype == np.int32
    for num_classes in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be a positive integer"):
            data.batches(images, labels, 128, train=True, num_classes=num_classes)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("parts", [2, 4])
def test_the_rows_of_each_process_make_up_the_whole_batches(fmnist_test, train, parts):
    images, labels = fmnist_test[0][:900], fmnist_test[1][:900]   # 900 = 3 * 256 + 132
    whole = list(data.batches(images, labels, 256, seed=5, epoch=1, train=train))
    share = 256 // parts
    split = [list(data.batches(images, labels, 256, seed=5, epoch=1, train=train,
                               rows=slice(k * share, (k + 1) * share))) for k in range(parts)]
    assert len(whole) == 3 + (not train) and all(len(p) == len(whole) for p in split)
    for i, batch in enumerate(whole):
        for key, value in batch.items():
            assert all(p[i][key].shape == (share, *value.shape[1:]) for p in split)
            np.testing.assert_array_equal(np.concatenate([p[i][key] for p in split]), value)
    if not train:               # the last batch: 132 real rows; with 4 parts one has none
        assert [p[-1]["mask"].sum() for p in split] == {2: [128, 4], 4: [64, 64, 4, 0]}[parts]


def test_rows_must_be_a_contiguous_part_of_a_batch(fmnist_test):
    images, labels = fmnist_test[0][:256], fmnist_test[1][:256]
    with pytest.raises(TypeError, match="rows must be a slice of a batch's rows"):
        data.batches(images, labels, 128, train=True, rows=[0, 1])
    for rows in (slice(0, 128, 2), slice(128, 200), slice(5, 5)):
        with pytest.raises(ValueError, match="rows must select a contiguous, non-empty part"):
            data.batches(images, labels, 128, train=False, rows=rows)


# ---------------------------------------------------------------------------- preprocess

@pytest.mark.parametrize("size", [28, 96])
def test_preprocess_scales_to_unit_range_and_resizes_under_jit(fmnist_test, size):
    images = fmnist_test[0][:16]
    out = jax.jit(data.preprocess, static_argnums=1)(images, size)
    assert out.shape == (16, size, size, 1) and out.dtype == np.float32
    out = np.asarray(out)
    assert out.min() >= 0 and out.max() <= 1
    if size == 28:
        np.testing.assert_allclose(out, images.astype(np.float32) / 255, rtol=1e-6)
    assert out.mean() == pytest.approx(images.mean() / 255, abs=2e-3)


def test_batches_explain_bad_labels_and_seeds(fmnist_test):
    images, labels = fmnist_test[0][:256], fmnist_test[1][:256]
    with pytest.raises(ValueError, match=r"shape \(256,\) for 256 images; got \(256, 1\)"):
        data.batches(images, labels[:, None], 128, train=True)
    with pytest.raises(ValueError, match=r"labels of shape \(256,\) for 256 images; got \(255,\)"):
        data.batches(images, labels[:-1], 128, train=True)
    with pytest.raises(TypeError, match="expected integer class labels; got dtype float32"):
        data.batches(images, labels.astype(np.float32) + 0.7, 128, train=True)
    for name in ("seed", "epoch"):
        with pytest.raises(ValueError, match=f"{name} must be a non-negative integer, got -1"):
            data.batches(images, labels, 128, train=True, **{name: -1})
    listed = next(data.batches(list(images), list(labels), 128, seed=3, train=True))
    expected = next(data.batches(images, labels, 128, seed=3, train=True))
    np.testing.assert_array_equal(listed["image"], expected["image"])


def test_preprocess_refuses_what_it_would_scale_wrongly(fmnist_test):
    images = fmnist_test[0][:2]
    with pytest.raises(TypeError, match="expects integer images in 0-255 .* got dtype float32"):
        data.preprocess(images.astype(np.float32) / 255, 28)     # already scaled: not again
    np.testing.assert_array_equal(data.preprocess(images.astype(np.int32), 28),
                                  data.preprocess(images, 28))
    with pytest.raises(ValueError, match=r"NHWC .* got shape \(2, 28, 28\)"):
        data.preprocess(images[..., 0], 28)
    for size in (0, -5, 2.5):
        with pytest.raises(ValueError, match=f"image_size must be a positive int, got {size}"):
            data.preprocess(images, size)


def test_preprocess_refuses_known_pixels_outside_0_255_and_clips_traced_ones(fmnist_test):
    images = fmnist_test[0][:2].astype(np.int32)
    for value in (1000, -5, 256):
        bad = images.copy()
        bad[1, 3, 4, 0] = value
        low, high = min(value, 0), max(value, 255)
        for given in (bad, jax.numpy.asarray(bad)):
            with pytest.raises(ValueError, match=re.escape(
                    f"pixel values in 0-255; got int32 values from {low} to {high}")):
                data.preprocess(given, 28)
        clipped = np.asarray(jax.jit(data.preprocess, static_argnums=1)(bad, 28))
        assert clipped[1, 3, 4, 0] == (value > 0)       # 1.0 or 0.0: clipped to 255 or 0
        others = np.arange(clipped.size) != 28 * 28 + 3 * 28 + 4
        np.testing.assert_array_equal(clipped.ravel()[others],
                                      np.asarray(data.preprocess(images, 28)).ravel()[others])


def test_a_data_dir_that_does_not_exist_is_an_error_even_when_cached(tmp_path, tfds_dir,
                                                                    fmnist_test):
    with pytest.raises(data.MissingSourceError, match="data directory .*nowhere does not exist"):
        data.fashion_mnist("test", tmp_path / "nowhere", tfds_data_dir=tfds_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(data.MissingSourceError,
                       match=f"data directory {re.escape(str(tmp_path))}/file is a file, not a "
                             f"directory"):
        data.fashion_mnist("test", tmp_path / "file", tfds_data_dir=tfds_dir)
    with pytest.raises(data.MissingSourceError, match="the data directory is '' \\(empty\\)"):
        data.fashion_mnist("test", "", tfds_data_dir=tfds_dir)
