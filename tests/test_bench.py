"""jaxcnn.bench and experiments/torch_reference.py, torch_train.py: the benchmark's JSON, the
book's PyTorch models' parameter counts against the book's and jaxcnn's, and the book's PyTorch
training loop."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn import bench, models

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def import_experiment(name: str):
    """The module experiments/NAME.py (the folder on sys.path only while importing)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def torch_reference():
    pytest.importorskip("torch")
    return import_experiment("torch_reference")


@pytest.fixture(scope="module")
def torch_train(torch_reference):
    return import_experiment("torch_train")


def test_bench_lenet_writes_json_with_every_field(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.run(parse("lenet", "--steps", "2", "--repeats", "2", "--json", str(path))) == 0
    result = json.loads(path.read_text())
    assert result["device_kind"] == jax.devices()[0].device_kind
    assert {"jax", "flax", "cpu_count", "load_1min", "batch_size", "xla_flags"} <= set(result)
    assert result["dtype"] == "float32"
    (row,) = result["models"]
    assert row["model"] == "lenet" and row["image_size"] == 28 and row["batch_size"] == 128
    assert (row["steps"], row["repeats"], row["params"]) == (2, 2, 61_706)
    assert row["macs_per_image"] == 416_520
    rates = row["train_images_per_s"]
    assert 0 < rates["min"] <= rates["median"] <= rates["max"]
    assert row["compile_s"] >= 0 and row["eval_images_per_s"] > 0
    assert row["gflop_per_s"] == pytest.approx(6 * 416_520 * rates["median"] / 1e9)
    assert row["peak_rss_mib"] > 0 and 0 <= row["foreign_cpu_max"] <= 1
    assert "torch_images_per_s" not in row
    pipeline = result["pipeline"]
    assert pipeline["batches_per_s"] > 0 and pipeline["batch_size"] == 128
    assert pipeline["ratio_to_lenet"] == pytest.approx(
        pipeline["batches_per_s"] * 128 / rates["median"])
    out = capsys.readouterr().out
    assert "lenet" in out and "input pipeline" in out


def test_bench_json_flag_alone_prints_json(capsys):
    assert bench.run(parse("lenet", "--steps", "1", "--repeats", "1", "--image-size", "20",
                           "--batch-size", "8", "--json")) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["models"][0]["image_size"] == 20 and result["batch_size"] == 8


def test_bench_rejects_unknown_models_and_bad_counts():
    with pytest.raises(ValueError, match="unknown model"):
        bench.run(parse("lenet5"))
    with pytest.raises(ValueError, match="--steps"):
        bench.run(parse("lenet", "--steps", "0"))


def test_compare_torch_without_torch_says_how_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert bench.run(parse("lenet", "--compare-torch")) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_torch_reference_parameter_counts(torch_reference):
    for name, expected in torch_reference.BOOK_PARAMS.items():
        count = torch_reference.num_params(torch_reference.create(name))
        assert count == expected, name
        if name in models.REGISTRY:
            params = nnx.state(nnx.eval_shape(functools.partial(models.create, name)), nnx.Param)
            assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == expected, name


def test_compare_torch_alternates_and_reports_ratios(torch_reference, tmp_path):
    path = tmp_path / "bench.json"
    assert bench.run(parse("lenet", "--steps", "2", "--repeats", "2", "--compare-torch",
                           "--json", str(path))) == 0
    results = json.loads(path.read_text())
    (row,) = results["models"]
    assert row["torch_params"] == row["params"] == 61_706
    assert f" on {torch_reference.device_name()} " in results["torch"]   # where it timed
    ratio = row["jax_over_torch"]
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]


def test_compare_torch_names_a_model_the_book_has_not(torch_reference):
    with pytest.raises(ValueError, match="unknown model 'resnext'"):
        bench.run(parse("resnext", "--steps", "1", "--repeats", "1", "--compare-torch"))


def test_torch_train_converts_our_images_as_totensor(torch_train):
    from jaxcnn import data

    images, labels = data.fashion_mnist("test")
    x, y = torch_train.to_tensors(images[:500], labels[:500])
    assert tuple(x.shape) == (500, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert str(y.dtype) == "torch.int64" and float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(x[:, 0].numpy(), images[:500, :, :, 0] / np.float32(255))
    np.testing.assert_array_equal(y.numpy(), labels[:500])


def test_torch_train_epochs_keep_the_short_last_batch_and_reshuffle(torch_train):
    cat = torch_train.torch.cat
    first, second = (torch_train.epoch_batches(1000, 128) for _ in range(2))
    assert [len(b) for b in first] == [128] * 7 + [104]          # ceil(1000 / 128), none dropped
    assert sorted(cat(first).tolist()) == list(range(1000))
    assert not cat(first).equal(cat(second))


def test_torch_train_learns_bn_lenet_in_one_short_epoch(torch_train):
    from jaxcnn import data

    train = torch_train.to_tensors(*(a[:6000] for a in data.fashion_mnist("train")))
    test = torch_train.to_tensors(*(a[:2000] for a in data.fashion_mnist("test")))
    # One epoch of 6,000 images: 0.66-0.67 measured over seeds 0-2; chance is 0.10.
    (acc,) = torch_train.fit("bn_lenet", seed=0, epochs=1, batch_size=128, lr=0.1,
                             train=train, test=test)
    assert 0.5 < acc < 1.0


def test_torch_train_seed_lists(torch_train):
    assert torch_train.seeds("0-3") == [0, 1, 2, 3]
    assert torch_train.seeds("5,7") == [5, 7] and torch_train.seeds("0-2,9") == [0, 1, 2, 9]
