"""jaxcnn.bench, jaxcnn.torch_models and experiments/torch_train.py: the benchmark's JSON and
its numbers' checks, the PyTorch side with its defaults and tuned, the book's PyTorch models'
parameter counts against the book's and jaxcnn's, and the book's PyTorch training loop."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import pathlib
import subprocess
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
def torch_models():
    pytest.importorskip("torch")
    from jaxcnn import torch_models

    return torch_models


@pytest.fixture(scope="module")
def torch_train(torch_models):
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
    # The first call traces and compiles (well over one step of 128 LeNet images): compile_s
    # is it less one step at the median rate, unclamped.
    assert row["compile_s"] == pytest.approx(row["first_call_s"] - 128 / rates["median"])
    assert 0 < row["compile_s"] < row["first_call_s"] and row["eval_images_per_s"] > 0
    assert row["gflop_per_s"] == pytest.approx(6 * 416_520 * rates["median"] / 1e9)
    assert row["peak_rss_mib"] > 0
    assert "torch_images_per_s" not in row
    pipeline = result["pipeline"]
    assert pipeline["batches_per_s"] > 0 and pipeline["batch_size"] == 128
    assert pipeline["ratio_to_lenet"] == pytest.approx(
        pipeline["batches_per_s"] * 128 / rates["median"])
    out = capsys.readouterr().out
    assert "lenet" in out and "input pipeline" in out


@pytest.mark.parametrize("mode", ["vmap", "interleave"])
def test_bench_seeds_sums_the_images_of_every_seed(tmp_path, capsys, mode):
    path = tmp_path / "bench.json"
    assert bench.run(parse("bn_lenet", "--seeds", "3", "--seeds-mode", mode, "--steps", "2",
                           "--repeats", "1", "--json", str(path))) == 0
    (row,) = json.loads(path.read_text())["models"]
    assert (row["seeds"], row["seeds_mode"]) == (3, mode)
    rates = row["train_images_per_s"]
    # A first call is one step of all three seeds: 3 x 128 images at the median rate.
    assert row["compile_s"] == pytest.approx(row["first_call_s"] - 3 * 128 / rates["median"])
    assert f"bn_lenet x3 {mode}" in capsys.readouterr().out


def test_foreign_share_is_the_others_busy_time_over_all_time():
    # (busy ticks, all ticks, own ticks): 500 busy of 1000, of which 300 were ours.
    assert bench._foreign_share((100, 1000, 50), (600, 2000, 350)) == pytest.approx(0.2)
    assert bench._foreign_share((0, 0, 0), (10, 100, 10)) == 0.0          # only ours
    assert bench._foreign_share(None, (10, 100, 10)) == 0.0               # no /proc


def test_bench_sees_another_process_on_the_cpu(capsys):
    """A busy loop beside the benchmark takes up to one of the 2 cores: the repeats see at
    least a fifth of the machine's time go to it, and the table warns."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert bench.run(parse("lenet", "--steps", "20", "--repeats", "2", "--json")) == 0
    finally:
        spinner.kill()
        spinner.wait()
    out = capsys.readouterr().out
    row = json.loads(out[out.index("{"):])["models"][0]
    assert 0.2 <= row["foreign_cpu_max"] <= 1
    assert "warning: other processes used the CPU" in out


def test_bench_json_to_an_unwritable_path_fails_before_the_benchmark(tmp_path, capsys):
    for path in (tmp_path / "missing" / "bench.json", tmp_path):
        with pytest.raises(ValueError, match=r"--json .* cannot be written"):
            bench.run(parse("lenet", "--json", str(path)))
        assert "images/s" not in capsys.readouterr().err              # nothing was timed
    existing = tmp_path / "kept.json"
    existing.write_text("old")
    bench.check_writable(existing)
    assert existing.read_text() == "old"
    bench.check_writable(tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()


def test_bench_refuses_a_step_bigger_than_the_device_before_timing(capsys):
    # Its activations alone: 8192 x 1024 x 1024 x 6 float32 = 192 GiB, above any one device.
    with pytest.raises(ValueError, match=r"needs at least [\d,.]+ GiB .*lower the image size"):
        bench.run(parse("lenet", "--image-size", "1024", "--batch-size", "8192", "--steps", "1",
                        "--repeats", "1"))
    assert "images/s" not in capsys.readouterr().err


def test_compare_torch_modes():
    assert parse("lenet").compare_torch is None
    assert parse("lenet", "--compare-torch").compare_torch == "default"
    assert parse("lenet", "--compare-torch", "tuned").compare_torch == "tuned"
    with pytest.raises(SystemExit):
        parse("lenet", "--compare-torch", "fast")


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


def test_torch_models_parameter_counts(torch_models):
    assert set(torch_models.MODELS) == set(models.REGISTRY)         # every registry model
    import torch

    for name, expected in torch_models.BOOK_PARAMS.items():
        with torch.device("meta"):           # the modules' shapes without their values
            count = torch_models.num_params(torch_models.create(name))
        assert count == expected, name
        params = nnx.state(nnx.eval_shape(functools.partial(models.create, name)), nnx.Param)
        assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == expected, name


def test_torch_reference_script_is_torch_models_command_line():
    out = subprocess.run([sys.executable, str(EXPERIMENTS / "torch_reference.py"), "lenet"],
                         capture_output=True, text=True, check=True).stdout
    assert "lenet" in out and "61,706 parameters (the book: ok)" in out


def test_compare_torch_alternates_and_reports_ratios(torch_models, tmp_path):
    path = tmp_path / "bench.json"
    assert bench.run(parse("lenet", "--steps", "2", "--repeats", "2", "--compare-torch",
                           "--json", str(path))) == 0
    results = json.loads(path.read_text())
    (row,) = results["models"]
    assert row["torch_params"] == row["params"] == 61_706
    assert f" on {torch_models.device_name()} " in results["torch"]   # where it timed
    assert results["torch_mode"] == "default" and results["torch_settings"] == {}
    assert "PyTorch's defaults" in results["torch"]
    ratio = row["jax_over_torch"]
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]


def test_compare_torch_tuned_says_what_it_applied_and_skipped(torch_models, tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.run(parse("lenet", "--batch-size", "8", "--steps", "2", "--repeats", "1",
                           "--compare-torch", "tuned", "--json", str(path))) == 0
    results = json.loads(path.read_text())
    settings = results["torch_settings"]
    assert results["torch_mode"] == "tuned"
    assert settings == torch_models.tuned_settings() and list(settings) == list(
        torch_models.TUNED_SETTINGS)
    assert settings["channels_last"] is None                          # applies everywhere
    if torch_models.DEVICE.type == "cpu":
        assert settings["cudnn.benchmark"] == "no cuDNN on the CPU"
        assert settings["TF32 matmuls"] == "TF32 is a GPU number format"
    (row,) = results["models"]
    assert row["torch_params"] == 61_706 and row["torch_warmup_s"] > 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "tuned: channels_last" in head and ("skipped: cudnn.benchmark" in head
                                               or torch_models.DEVICE.type == "cuda")


def test_tuned_train_step_learns_as_the_default_one(torch_models):
    """The tuned step (channels_last, bf16 autocast, torch.compile where they apply) computes
    the same training: its losses over steps follow the default step's to bfloat16's
    precision. (Batch 8 as the test above: torch.compile's cache then holds its graph.)"""
    losses = {}
    for tuned in (False, True):
        step = torch_models.TrainStep("lenet", batch_size=8, lr=0.1, tuned=tuned)
        losses[tuned] = [float(step.step()) for _ in range(5)]
    assert losses[False][-1] < losses[False][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=0.02)


def test_torch_side_names_a_model_it_has_not(torch_models):
    side = bench.TorchSide()
    try:
        with pytest.raises(ValueError, match="--compare-torch: unknown model 'resnet34'"):
            side.build("resnet34", 8, 28)
        assert side.build("lenet", 8, 28) == 61_706                 # still serving
    finally:
        side.close()


def test_torch_loop_converts_our_images_as_totensor(torch_models):
    from jaxcnn import data

    images, labels = data.fashion_mnist("test")
    x, y = torch_models.to_tensors(images[:500], labels[:500])
    assert tuple(x.shape) == (500, 1, 28, 28) and str(x.dtype) == "torch.float32"
    assert str(y.dtype) == "torch.int64" and float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(x[:, 0].numpy(), images[:500, :, :, 0] / np.float32(255))
    np.testing.assert_array_equal(y.numpy(), labels[:500])


def test_torch_loop_epochs_keep_the_short_last_batch_and_reshuffle(torch_models):
    cat = torch_models.torch.cat
    first, second = (torch_models.epoch_batches(1000, 128) for _ in range(2))
    assert [len(b) for b in first] == [128] * 7 + [104]          # ceil(1000 / 128), none dropped
    assert sorted(cat(first).tolist()) == list(range(1000))
    assert not cat(first).equal(cat(second))


def test_torch_loop_learns_bn_lenet_in_one_short_epoch(torch_models):
    from jaxcnn import data

    train = torch_models.to_tensors(*(a[:6000] for a in data.fashion_mnist("train")))
    test = torch_models.to_tensors(*(a[:2000] for a in data.fashion_mnist("test")))
    # One epoch of 6,000 images: 0.66-0.67 measured over seeds 0-2; chance is 0.10.
    (acc,) = torch_models.fit("bn_lenet", seed=0, epochs=1, batch_size=128, lr=0.1,
                              train=train, test=test)
    assert 0.5 < acc < 1.0


def test_torch_train_seed_lists(torch_train):
    assert torch_train.seeds("0-3") == [0, 1, 2, 3]
    assert torch_train.seeds("5,7") == [5, 7] and torch_train.seeds("0-2,9") == [0, 1, 2, 9]
