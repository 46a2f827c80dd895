"""The run report (``jaxcnn report``): its numbers against ``jaxcnn eval``, its figures, its page
in a real browser, a multi-seed workdir, every model's input convolution, TensorBoard events."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from jaxcnn import cli, config, data, diagnose, models, ops, report, train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A reduced run (1 epoch on 2,048 training images; LeNet with ReLU, max pooling and Adam,
    so that it learns something in 16 steps; evaluated on all 10,000 test images) and its
    report through the
    command line, with a killed report's leftover beside a file of the user's."""
    workdir = tmp_path_factory.mktemp("lenet")
    cfg = config.recipe("lenet", "book", epochs=1, train_examples=2048, optimizer="adam",
                        lr=0.003, model_overrides={"activation": "relu", "pool": "max"},
                        checkpoint_every=0)
    train.fit(cfg, workdir, progress=False, log=lambda message: None)
    (workdir / "report").mkdir()
    (workdir / "report" / ".confusion.png.k1ll3d.tmp").write_bytes(b"half a PNG")
    (workdir / "report" / ".notes.tmp").write_text("mine")
    assert cli.main(["report", str(workdir)]) == 0
    return workdir


def test_report_writes_every_file_and_clears_only_its_own_leftovers(run):
    folder = run / "report"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*diagnose.FILES, ".notes.tmp"])


def test_confusion_counts_every_test_image_and_agrees_with_eval(run):
    saved = json.loads((run / "report" / "per_class.json").read_text())
    confusion = np.array(saved["confusion"])
    _, labels = data.fashion_mnist("test")
    assert confusion.shape == (10, 10) and confusion.sum() == 10_000 == saved["test_examples"]
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    evaluated = train.evaluate_workdir(run)
    assert np.trace(confusion) == round(evaluated["test_acc"] * 10_000)
    assert saved["test_acc"] == evaluated["test_acc"]
    assert 0.3 < saved["test_acc"] < 0.95           # it learned something, not everything
    for k, row in enumerate(saved["classes"]):
        assert row["class"] == data.CLASS_NAMES[k] and row["support"] == 1000
        assert row["recall"] == confusion[k, k] / 1000
        assert row["precision"] == (confusion[k, k] / confusion[:, k].sum()
                                    if confusion[:, k].sum() else None)
        wrong = confusion[k].sum() + confusion[:, k].sum() - 2 * confusion[k, k]
        assert row["accuracy"] == pytest.approx(1 - wrong / 10_000, abs=1e-12)


# (width, height) in pixels for LeNet: 6 kernels in one row; 6 channels, 3 images x 2 layers.
EXPECTED_SIZES = {"confusion.png": (750, 650), "predictions.png": (1000, 640),
                  "kernels.png": (700, 170), "feature_maps.png": (890, 740)}


@pytest.mark.parametrize("name", diagnose.FIGURES)
def test_figures_are_drawn_at_their_size(run, name):
    image = Image.open(run / "report" / name)
    assert image.size == EXPECTED_SIZES[name]
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert pixels.std() > 20 and len(np.unique(pixels, axis=0)) > 200, name


def test_predictions_show_the_misclassified_first_then_a_seeded_sample():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    predicted = labels.copy()
    predicted[[4, 17, 25]] = 0
    chosen = diagnose.sample_predictions(labels, predicted, 8, seed=0)
    assert list(chosen[:3]) == [4, 17, 25] and len(set(chosen)) == 8
    assert not set(chosen[3:]) & {4, 17, 25}
    np.testing.assert_array_equal(chosen, diagnose.sample_predictions(labels, predicted, 8, 0))
    few = diagnose.sample_predictions(labels, predicted, 4, seed=0)     # half at most wrong
    assert set(few[:2]) < {4, 17, 25} and not set(few[2:]) & {4, 17, 25}
    assert list(diagnose.sample_predictions(labels, predicted, 8, 1)[3:]) != list(chosen[3:])


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), driven by Playwright's Python package without its
    downloaded browsers."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does where apt can)")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright not installed (the dev extra)")
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path, screenshot: Path):
    """The page at ``path`` loaded, every request it made, and a full-page screenshot."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    page.screenshot(path=str(screenshot), full_page=True)
    return page, requests


def test_page_shows_the_run_in_chromium(run, browser, tmp_path):
    page, requests = open_page(browser, run / "report" / "index.html", tmp_path / "shot.png")
    images = page.evaluate("Array.from(document.images).map(i => "
                           "[i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    assert [alt for alt, *_ in images] == ["curves.png", *diagnose.FIGURES]
    assert all(complete and width > 0 for _, complete, width, _ in images), images
    assert {alt: (w, h) for alt, _, w, h in images if alt in EXPECTED_SIZES} == EXPECTED_SIZES
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    val_acc = report.read_metrics(run)[-1]["val_acc"]
    assert page.inner_text("#final-val-acc") == f"{val_acc:.4f}"
    assert f"val_acc {val_acc:.4f}" in page.inner_text("body")
    assert page.locator("table.per-class tr").count() == 11
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert shot.shape[1] == 1200 and shot.shape[0] > 3000 and shot.std() > 20
    page.close()


def test_a_multi_seed_workdir_gets_a_section_per_seed_and_the_summary(run, browser, tmp_path):
    group = tmp_path / "group"
    for seed in (0, 1):
        shutil.copytree(run, group / f"seed-{seed}", ignore=shutil.ignore_patterns("report"))
    val_acc = report.read_metrics(run)[-1]["val_acc"]
    summary = [{"epoch": 1, "val_acc": {"mean": val_acc, "sd": 0.0, "min": val_acc,
                                        "median": val_acc, "max": val_acc}}]
    (group / "summary.json").write_text(json.dumps(summary))
    shutil.copy(run / "curves.png", group / "curves.png")
    index = diagnose.write_report(group, log=lambda message: None)
    assert index == group / "report" / "index.html"
    for seed in (0, 1):
        assert sorted(p.name for p in (group / f"seed-{seed}" / "report").iterdir()) == sorted(
            diagnose.FILES)
    page, requests = open_page(browser, index, tmp_path / "group.png")
    assert page.locator("section[id^=seed-]").count() == 2
    assert page.inner_text("#seed-1-final-val-acc") == f"{val_acc:.4f}"
    assert "median" in page.inner_text("#summary")
    loaded = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
    assert len(loaded) == 1 + 2 * 5 and all(width > 0 for width in loaded), loaded
    page.close()


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


# Every registry model: the input convolution and the first pooling layer are found, and the
# convolution is the one applied to the images (its output has the input's size through it).
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_input_conv_and_first_pool_of_every_model(name):
    size = max(models.spec(name).min_image_size, 32)
    model = nnx.eval_shape(lambda: models.create(name, image_size=size))
    path, conv = diagnose.input_conv(model)
    pool = diagnose.first_pool(model)
    assert (pool is None) == (name == "regnetx32")
    graphdef, state = nnx.split(model)
    shapes = jax.eval_shape(diagnose.capture(graphdef, [path] + ([pool] if pool else [])),
                            state, jax.ShapeDtypeStruct((3, size, size, 1), jnp.float32))
    side = ops.conv_output_size(size, conv.kernel_size[0], conv.strides, conv.padding)
    assert shapes[0].shape == (3, side, side, conv.out_features)
    if pool:
        assert shapes[1].shape[0] == 3 and shapes[1].shape[1] < side


def test_feature_maps_of_a_model_without_a_pooling_layer():
    """RegNet's only pooling is the head's global average: one row per image, the conv's."""
    conv = np.random.default_rng(0).normal(size=(3, 8, 8, 32)).astype(np.float32)
    png = diagnose.plot_feature_maps(np.zeros((3, 28, 28, 1), np.uint8), np.arange(3),
                                     [("conv", conv)], "regnet")
    assert Image.open(io.BytesIO(png)).size == (110 * (2 + 8) + 10, 110 * 3 + 80)


def test_input_conv_refuses_a_model_whose_first_conv_is_not_the_input():
    class Odd(nnx.Module):
        def __init__(self):
            self.a = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match="takes 3 channels, not the images' 1"):
        diagnose.input_conv(nnx.eval_shape(Odd))


# ----------------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------------

def test_tensorboard_events_read_back_once_per_epoch(run, tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard (its event reader) is not installed")
    from jaxcnn import tensorboard

    workdir = tmp_path / "tb"
    shutil.copytree(run / "report", workdir / "report")     # written after epoch 1
    first = report.read_metrics(run)[0]
    history = [first, {**first, "epoch": 2, "val_acc": 0.5, "seconds": 2.0}]
    path = tensorboard.log_tensorboard(workdir, history[:1])
    once = path.read_bytes()
    tensorboard.log_tensorboard(workdir, history)               # resumed: epoch 2 appended
    tensorboard.log_tensorboard(workdir, history)               # again: nothing duplicated
    assert path.read_bytes().startswith(once)                  # a live reader sees appends
    assert [p.name for p in path.parent.iterdir()] == [tensorboard.EVENT_FILE]

    events = accumulator.EventAccumulator(str(path.parent), size_guidance={"images": 0,
                                                                           "scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val_acc")] == [
        (1, pytest.approx(first["val_acc"])), (2, 0.5)]
    times = [e.wall_time for e in events.Scalars("seconds")]
    assert times[1] - times[0] == pytest.approx(2.0)
    assert set(events.Tags()["scalars"]) == set(first) - {"epoch"}
    (image,) = events.Images(tensorboard.CONFUSION_TAG)
    assert (image.step, image.width, image.height) == (1, *EXPECTED_SIZES["confusion.png"])
    assert image.encoded_image_string == (run / "report" / "confusion.png").read_bytes()
    assert struct.unpack(">II", image.encoded_image_string[16:24]) == (750, 650)


def test_tensorboard_names_its_extra_when_missing(monkeypatch, tmp_path):
    import sys

    from jaxcnn import tensorboard

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorboardX.proto", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'jaxcnn[tensorboard]'")):
        tensorboard.log_tensorboard(tmp_path, [])
