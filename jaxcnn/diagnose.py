"""The run report: what a trained network learned, as figures and one HTML page.

``write_report(workdir, which)`` reads a workdir (``config.json``, ``metrics.jsonl``,
``curves.png`` and the ``which`` checkpoint through ``train.load_model``), runs the model on all
10,000 test images and writes ``WORKDIR/report/``:

- ``confusion.png``: the 10x10 confusion matrix (rows: true class, columns: predicted), counts
  in the cells, shading by row (the fraction of each true class);
- ``per_class.json``: per class precision, recall (the fraction of the class recognised) and
  one-vs-rest accuracy, with the matrix itself;
- ``predictions.png``: test images with true label, predicted label and its probability, the
  misclassified ones first, then a seeded random sample;
- ``kernels.png``: the input convolution's learned kernels;
- ``feature_maps.png``: the input convolution's and the first pooling layer's activations for
  the first three test images;
- ``index.html``: one page, no internet and no script, the figures embedded (base64): config,
  metrics, curves, the four figures and the per-class table.

A multi-seed workdir (``WORKDIR/summary.json`` beside ``WORKDIR/seed-N/`` runs) gets each seed's
report in ``seed-N/report/`` and a page ``WORKDIR/report/index.html`` with the summary and one
section per seed (its images linked beside it, in the seeds' report folders). Every file is
written atomically (``report.atomic_write``), so a kill never leaves half a file.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, layers, report, train

REPORT_DIR = "report"
FIGURES = ("confusion.png", "predictions.png", "kernels.png", "feature_maps.png")
FILES = (*FIGURES, "per_class.json", "index.html")
DPI = 100                        # figure inches x DPI = PNG pixels
PREDICTION_GRID = (4, 8)         # rows x columns of predictions.png
KERNEL_COLUMNS = 12              # kernels.png: at most this many kernels a row
MAP_CHANNELS = 8                 # feature_maps.png: the first channels of each layer
MAP_IMAGES = 3                   # feature_maps.png: the first test images
POOLS = (layers.MaxPool2d, layers.AvgPool2d)


# ----------------------------------------------------------------------------------------------
# What the model does on the test set
# ----------------------------------------------------------------------------------------------

def probabilities(model: nnx.Module, images: np.ndarray, image_size: int,
                  batch_size: int) -> np.ndarray:
    """Softmax outputs ``(N, 10)`` float32 of ``model`` on uint8 images ``(N, 28, 28, 1)``,
    every image exactly once (padded, masked batches of ``batch_size``, as in evaluation)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, images):
        logits = nnx.merge(graphdef, state)(data.preprocess(images, image_size))
        return jax.nn.softmax(logits.astype(jnp.float32))

    labels = np.zeros(len(images), np.int32)
    out = [np.asarray(apply(state, batch["image"]))[batch["mask"]]
           for batch in data.batches(images, labels, batch_size, train=False)]
    return np.concatenate(out)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, classes)`` int64 counts: row = true class, column = predicted class."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def per_class_metrics(confusion: np.ndarray) -> list[dict[str, Any]]:
    """For each class: support, precision (None when never predicted), recall and one-vs-rest
    accuracy ((true positives + true negatives) / all)."""
    total, rows = int(confusion.sum()), []
    for k, name in enumerate(data.CLASS_NAMES):
        hit, true, predicted = (int(confusion[k, k]), int(confusion[k].sum()),
                                int(confusion[:, k].sum()))
        rows.append({"class": name, "support": true,
                     "precision": hit / predicted if predicted else None,
                     "recall": hit / true if true else None,
                     "accuracy": (total - true - predicted + 2 * hit) / total})
    return rows


def input_conv(model: nnx.Module) -> tuple[tuple, nnx.Conv]:
    """(path, module) of the first ``nnx.Conv`` in ``nnx.iter_modules`` order; ``ValueError``
    when there is none or it does not take the 1-channel images (``activations`` also checks
    that it is the one applied to the input)."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv):
            if module.in_features != 1:
                raise ValueError(f"the first convolution of {type(model).__name__} ({path}) "
                                 f"takes {module.in_features} channels, not the images' 1")
            return path, module
    raise ValueError(f"{type(model).__name__} has no convolution")


def first_pool(model: nnx.Module) -> tuple | None:
    """Path of the first pooling layer (``layers.MaxPool2d`` / ``AvgPool2d``) in
    ``nnx.iter_modules`` order, or None (RegNet pools only globally, in its head)."""
    return next((path for path, module in nnx.iter_modules(model)
                 if isinstance(module, POOLS)), None)


def capture(graphdef: nnx.GraphDef, paths: Sequence[tuple]) -> Callable:
    """A pure function ``(state, x) -> [outputs]``: the model ``nnx.merge(graphdef, state)`` run
    on ``x`` ``(N, H, W, 1)`` float32, and the outputs ``(N, H', W', C)`` of the modules at
    ``paths`` (of their first call), captured with ``nnx.capture``."""
    def run(state, x):
        module = nnx.merge(graphdef, state)
        _, sown = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        flat = dict(nnx.to_flat_state(sown))
        return [flat[(*path, "__call__")].get_value()[0] for path in paths]

    return run


def activations(model: nnx.Module, x: jax.Array, paths: Sequence[tuple]) -> list[np.ndarray]:
    """The outputs of ``model``'s modules at ``paths`` on ``x`` (see ``capture``), jitted."""
    graphdef, state = nnx.split(model)
    return [np.asarray(v) for v in jax.jit(capture(graphdef, paths))(state, x)]


@dataclass
class RunReport:
    """What ``analyse`` computed for one run; the pages are made from it."""

    workdir: Path
    which: str
    config: dict[str, Any]
    history: list[dict]
    confusion: np.ndarray
    per_class: list[dict[str, Any]]
    figures: dict[str, bytes]         # file name -> PNG bytes

    @property
    def test_acc(self) -> float:
        return float(np.trace(self.confusion) / self.confusion.sum())


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects, no pyplot state)
# ----------------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plot_confusion(confusion: np.ndarray, title: str) -> bytes:
    """750 x 650 px: counts, shaded by the row's fraction, class names on both axes."""
    from matplotlib.figure import Figure

    names = data.CLASS_NAMES
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_axes((0.17, 0.17, 0.68, 0.75))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, cax=fig.add_axes((0.87, 0.17, 0.025, 0.75)),
                 label="fraction of the true class")
    return _png(fig)


def sample_predictions(labels: np.ndarray, predicted: np.ndarray, count: int,
                       seed: int) -> np.ndarray:
    """Indices of ``count`` test images: up to half of them misclassified, then the others a
    random sample of the rest; both drawn with ``seed``, each part in test-set order."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(labels != predicted)
    wrong = np.sort(rng.choice(wrong, min(len(wrong), count // 2), replace=False))
    rest = np.setdiff1d(np.arange(len(labels)), wrong)
    return np.concatenate([wrong, np.sort(rng.choice(rest, count - len(wrong), replace=False))])


def _canvas(width: float, height: float):
    """A ``width`` x ``height`` inch figure and one invisible axes over all of it whose data
    coordinates are inches from the bottom left: tiles and labels are placed on it directly
    (one axes, not one per tile: matplotlib's axes cost most of a report's time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def _tile(ax, values: np.ndarray, x: float, y: float, size: float, **style):
    """``values`` (h, w) drawn as a ``size``-inch square with its bottom left at (x, y)."""
    return ax.imshow(values, extent=(x, x + size, y, y + size), aspect="auto",
                     interpolation="nearest", **style)


def plot_predictions(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     chosen: np.ndarray, title: str) -> bytes:
    """1000 x 640 px: a ``PREDICTION_GRID`` of test images, each titled with its true label
    and the predicted one with its probability (red where they differ)."""
    rows, cols = PREDICTION_GRID
    fig, ax = _canvas(10, 6.4)
    for k, i in enumerate(chosen):
        r, c = divmod(k, cols)
        x, y = 0.1 + 1.25 * c, 6.4 - 0.6 - 1.45 * (r + 1)
        guess = int(probs[i].argmax())
        _tile(ax, images[i, :, :, 0], x + 0.15, y, 0.95, cmap="gray_r", vmin=0, vmax=255)
        ax.text(x + 0.625, y + 1.0, f"{data.CLASS_NAMES[labels[i]]}\n-> "
                f"{data.CLASS_NAMES[guess]} {probs[i, guess]:.2f}", fontsize=7, ha="center",
                va="bottom", color="black" if guess == labels[i] else "red")
    ax.text(0.1, 6.3, title, fontsize=9, va="top")
    return _png(fig)


def kernel_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of kernels.png for ``count`` kernels."""
    cols = min(count, KERNEL_COLUMNS)
    return -(-count // cols), cols


def plot_kernels(kernel: np.ndarray, title: str) -> bytes:
    """The kernels ``(kh, kw, 1, C)`` (HWIO) as C images on one symmetric colour scale
    (blue negative, red positive), in the grid of ``kernel_grid(C)``:
    ``max(90 x columns + 110, 700) x (90 x rows + 80)`` px."""
    count = kernel.shape[-1]
    rows, cols = kernel_grid(count)
    width, height = max(0.9 * cols + 1.1, 7.0), 0.9 * rows + 0.8
    fig, ax = _canvas(width, height)
    limit = float(np.abs(kernel).max()) or 1.0
    for k in range(count):
        r, c = divmod(k, cols)
        image = _tile(ax, kernel[:, :, 0, k], 0.1 + 0.9 * c, height - 0.7 - 0.9 * (r + 1),
                      0.8, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, cax=fig.add_axes(((0.9 * cols + 0.3) / width, 0.1 / height,
                                          0.15 / width, (0.9 * rows - 0.1) / height)))
    ax.text(0.1, height - 0.08, title, fontsize=9, va="top")
    return _png(fig)


def plot_feature_maps(images: np.ndarray, labels: np.ndarray,
                      maps: Sequence[tuple[str, np.ndarray]], title: str) -> bytes:
    """For each of the ``len(images)`` images, one row per ``(name, activations (N, H, W, C))``
    of ``maps``: the layer's name, the input image (first row), then the first
    ``MAP_CHANNELS`` channels, each on its own grey scale.
    ``(110 x (2 + channels) + 10) x (110 x rows + 80)`` px."""
    channels = min(MAP_CHANNELS, min(m.shape[-1] for _, m in maps))
    rows, cols = len(images) * len(maps), 2 + channels
    width, height = 1.1 * cols + 0.1, 1.1 * rows + 0.8
    fig, ax = _canvas(width, height)
    for r in range(rows):
        n, (name, values) = r // len(maps), maps[r % len(maps)]
        y = height - 0.7 - 1.1 * (r + 1) + 0.05
        ax.text(0.1, y + 0.45, f"{name}\n{'x'.join(map(str, values.shape[1:]))}",
                fontsize=7, va="center")
        if r % len(maps) == 0:
            _tile(ax, images[n, :, :, 0], 1.2, y, 0.9, cmap="gray_r", vmin=0, vmax=255)
            ax.text(1.65, y + 0.92, f"image {n}: {data.CLASS_NAMES[labels[n]]}", fontsize=7,
                    ha="center", va="bottom")
        for c in range(channels):
            _tile(ax, values[n, :, :, c], 2.3 + 1.1 * c, y, 0.9, cmap="gray")
            ax.text(2.75 + 1.1 * c, y + 0.92, f"channel {c}", fontsize=7, ha="center",
                    va="bottom")
    ax.text(0.1, height - 0.08, title, fontsize=9, va="top")
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def _name(path: tuple) -> str:
    return ".".join(map(str, path))


def analyse(workdir: str | Path, which: str = "best", *, test: tuple | None = None,
            data_dir: str | None = None, seed: int = 0) -> RunReport:
    """Compute everything the report of the run in ``workdir`` shows (nothing written).
    ``test``: the (images, labels) test split, else read with the run's ``data_dir``."""
    workdir = Path(workdir)
    model = train.load_model(workdir, which)          # checks the workdir and the checkpoint
    config = json.loads((workdir / "config.json").read_text())
    history = report.read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []
    images, labels = test or data.fashion_mnist("test", data_dir or config.get("data_dir"))
    size = config["image_size"]
    probs = probabilities(model, images, size, config["batch_size"])
    predicted = probs.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, len(data.CLASS_NAMES))
    accuracy = np.trace(confusion) / len(labels)
    run = f"{config['model']}, {config['recipe']} recipe, {which} checkpoint"

    conv_path, conv = input_conv(model)
    pool_path = first_pool(model)
    x = data.preprocess(images[:MAP_IMAGES], size)
    paths = [conv_path] + ([pool_path] if pool_path else [])
    captured = activations(model, x, paths)
    direct = np.asarray(conv(x))        # the same conv on the images: equal if it is theirs
    if captured[0].shape != direct.shape or not np.allclose(captured[0], direct, rtol=1e-2,
                                                            atol=1e-2):
        raise ValueError(f"the first convolution of {type(model).__name__} in module order "
                         f"({_name(conv_path)}) is not the one applied to the input")
    kh, kw = conv.kernel_size
    maps = [(f"conv {_name(conv_path)}", captured[0])]
    if pool_path:
        maps.append((f"pool {_name(pool_path)}", captured[1]))
    no_pool = "" if pool_path else "; no pooling layer before the head"

    figures = {
        "confusion.png": plot_confusion(
            confusion, f"{run}: accuracy {accuracy:.4f} on all {len(labels):,} test images"),
        "predictions.png": plot_predictions(
            images, labels, probs,
            sample_predictions(labels, predicted, math.prod(PREDICTION_GRID), seed),
            f"{run}: true label -> predicted label, probability\nmisclassified test images "
            f"first ({int((predicted != labels).sum()):,} of {len(labels):,} wrong), then a "
            f"random sample (seed {seed})"),
        "kernels.png": plot_kernels(
            np.asarray(conv.kernel[...]),
            f"{run}\nthe {conv.out_features} {kh}x{kw} kernels of the input convolution "
            f"({_name(conv_path)}, stride {conv.strides})"),
        "feature_maps.png": plot_feature_maps(
            images[:MAP_IMAGES], labels[:MAP_IMAGES], maps,
            f"{run}\nactivations of the first test images at {size}x{size} px{no_pool}"),
    }
    return RunReport(workdir, which, config, history, confusion, per_class_metrics(confusion),
                     figures)


def write_report(workdir: str | Path, which: str = "best", *, data_dir: str | None = None,
                 seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write ``WORKDIR/report/`` for the run in ``workdir`` (``which``: 'best' or 'latest'
    checkpoint; ``seed``: the random sample of predictions.png) and return its index.html.
    A multi-seed workdir gets every seed's report and a page for the group."""
    workdir = Path(workdir)
    seeds = seed_dirs(workdir)
    if not seeds:
        path = write_run_report(workdir, which, data_dir=data_dir, seed=seed)[1]
    else:
        first = json.loads((seeds[0] / "config.json").read_text())
        test = data.fashion_mnist("test", data_dir or first.get("data_dir"))
        runs = [write_run_report(d, which, test=test, seed=seed)[0] for d in seeds]
        page = seeds_page(workdir, runs, json.loads((workdir / "summary.json").read_text()))
        path = _write_page(_prepare(workdir / REPORT_DIR), page)
    log(f"report: {path}")
    return path


def write_run_report(workdir: Path, which: str, *, test: tuple | None = None,
                     data_dir: str | None = None, seed: int = 0) -> tuple[RunReport, Path]:
    """``analyse`` one run and write its ``report/`` folder; returns it and its index.html."""
    run = analyse(workdir, which, test=test, data_dir=data_dir, seed=seed)
    directory = _prepare(Path(workdir) / REPORT_DIR)
    for name, png in run.figures.items():
        report.atomic_write(directory / name, lambda f, png=png: f.write(png))
    report.write_json(directory / "per_class.json", {
        "which": run.which, "test_examples": int(run.confusion.sum()),
        "test_acc": run.test_acc,
        "metrics_epoch": run.history[-1]["epoch"] if run.history else None,
        "classes": run.per_class, "confusion": run.confusion.tolist()})
    return run, _write_page(directory, run_page(run))


def _prepare(directory: Path) -> Path:
    """``directory``, created, without the temporary files of a killed report
    (``.NAME.XXXX.tmp`` of the files named in ``FILES``; other files are left alone)."""
    directory.mkdir(exist_ok=True)
    for name in FILES:
        for leftover in directory.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    return directory


def _write_page(directory: Path, page: str) -> Path:
    path = directory / "index.html"
    report.atomic_write(path, lambda f: f.write(page.encode()))
    return path


def seed_dirs(workdir: Path) -> list[Path]:
    """The ``seed-N`` runs of a multi-seed workdir (one with ``summary.json``), by N."""
    if not (workdir / "summary.json").is_file():
        return []
    found = [d for d in workdir.glob("seed-*")
             if re.fullmatch(r"seed-\d+", d.name) and (d / "config.json").is_file()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


# ----------------------------------------------------------------------------------------------
# The pages
# ----------------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.big { font-size: 1.4em; font-weight: bold; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
"""


def _cell(value: Any, field: str = "") -> str:
    """A table cell: None as a dash, floats to 4 digits (throughput to 0, seconds to 1, below
    0.001 to 3 significant ones)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value and abs(value) < 1e-3:               # a learning rate, say
            return f"{value:.3g}"
        digits = {"images_per_s": 0, "seconds": 1}.get(field, 4)
        return f"{value:,.{digits}f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], attrs: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v, h)}</td>" for h, v in zip(header, row,
                                                                            strict=True))
                   + "</tr>" for row in rows)
    return f"<table{attrs}><tr>{head}</tr>{body}</table>"


def _img(source: str, alt: str) -> str:
    return f'<img src="{html.escape(source)}" alt="{html.escape(alt)}">'


def _embedded(png: bytes, alt: str) -> str:
    return _img("data:image/png;base64," + base64.b64encode(png).decode(), alt)


def _metrics_section(run: RunReport, key: str) -> str:
    history = run.history
    if not history:
        return "<p>No metrics.jsonl: no epoch finished.</p>"
    last = history[-1]
    fields = [f for f in report.METRIC_FIELDS if f in last] + sorted(
        f for f in last if f not in report.METRIC_FIELDS and isinstance(f, str))
    tested = (f', test_acc <span class="big" id="{key}test-acc">{last["test_acc"]:.4f}</span>'
              if "test_acc" in last else "")
    return (f'<p>After epoch {last["epoch"]} of {run.config.get("epochs", "?")}: val_acc '
            f'<span class="big" id="{key}final-val-acc">{last["val_acc"]:.4f}</span>{tested} '
            f'(metrics.jsonl). The {run.which} checkpoint on all {int(run.confusion.sum()):,} '
            f'test images: accuracy <span id="{key}report-acc">{run.test_acc:.4f}</span>.</p>'
            + _table(fields, [[row.get(f) for f in fields] for row in history]))


def _per_class_table(run: RunReport) -> str:
    return _table(("class", "support", "precision", "recall", "accuracy (one-vs-rest)"),
                  [[r["class"], r["support"], r["precision"], r["recall"], r["accuracy"]]
                   for r in run.per_class], ' class="per-class"')


def _config_table(config: dict[str, Any]) -> str:
    return _table(("field", "value"), [[k, json.dumps(v)] for k, v in config.items()])


CAPTIONS = {
    "confusion.png": "Confusion matrix: rows are the true classes, columns the predicted ones; "
                     "shading by the fraction of each true class.",
    "predictions.png": "Predictions: true label, then the prediction and its probability "
                       "(red: wrong).",
    "kernels.png": "The learned kernels of the input convolution.",
    "feature_maps.png": "What the first convolution and the first pooling layer make of three "
                        "test images.",
}


def _run_body(run: RunReport, image: Callable[[str], str], key: str = "") -> str:
    curves = run.workdir / "curves.png"
    parts = [f"<h3>Metrics</h3>{_metrics_section(run, key)}"]
    if curves.is_file():
        parts.append(f"<h3>Curves</h3>{image('curves.png')}")
    for name in FIGURES:
        title = name.removesuffix(".png").replace("_", " ").capitalize()
        parts.append(f"<h3>{title}</h3><p>{CAPTIONS[name]}</p>{image(name)}")
        if name == "confusion.png":
            parts.append(f"<h3>Per class</h3>{_per_class_table(run)}")
    parts.append(f"<h3>Config</h3>{_config_table(run.config)}")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def run_page(run: RunReport) -> str:
    """One run's index.html, its figures and curves embedded."""
    def image(name: str) -> str:
        png = run.figures.get(name) or (run.workdir / name).read_bytes()
        return _embedded(png, name)

    cfg = run.config
    return _page(f"jaxcnn report: {cfg['model']}, {cfg['recipe']} recipe, seed {cfg['seed']}",
                 f"<p>Workdir {html.escape(str(run.workdir))}; {run.which} checkpoint.</p>\n"
                 + _run_body(run, image))


def _summary_section(workdir: Path, summary: Any) -> str:
    """The summary's last epoch as a table of statistics when it has that shape (a list of
    per-epoch objects mapping metric -> {mean, sd, ...}), else the JSON as it is."""
    epochs = summary if isinstance(summary, list) else next(
        (v for v in summary.values() if isinstance(v, list)), None) \
        if isinstance(summary, dict) else None
    parts = []
    if (workdir / "curves.png").is_file():
        parts.append(_embedded((workdir / "curves.png").read_bytes(), "curves.png"))
    last = epochs[-1] if epochs and isinstance(epochs[-1], dict) else None
    stats = {k: v for k, v in (last or {}).items() if isinstance(v, dict)}
    if stats:
        columns = list(dict.fromkeys(c for v in stats.values() for c in v))
        parts.append(f"<p>Epoch {_cell(last.get('epoch'))}, over seeds:</p>"
                     + _table(["metric", *columns],
                              [[k, *(v.get(c) for c in columns)] for k, v in stats.items()]))
    else:
        parts.append(f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>")
    return "\n".join(parts)


def seeds_page(workdir: Path, runs: Sequence[RunReport], summary: Any) -> str:
    """The group page of a multi-seed workdir: the summary, then one section per seed with
    its images linked from ``seed-N/report/`` (and ``seed-N/curves.png``)."""
    sections = []
    for run in runs:
        name = run.workdir.name

        def image(file: str, name=name) -> str:
            folder = f"../{name}/" if file == "curves.png" else f"../{name}/{REPORT_DIR}/"
            return _img(folder + file, f"{name} {file}")

        sections.append(f'<section id="{name}"><h2>{name}</h2>'
                        f"{_run_body(run, image, key=name + '-')}</section>")
    cfg = runs[0].config
    links = " ".join(f'<a href="#{r.workdir.name}">{r.workdir.name}</a>' for r in runs)
    return _page(f"jaxcnn report: {cfg['model']}, {cfg['recipe']} recipe, {len(runs)} seeds",
                 f"<p>Workdir {html.escape(str(workdir))}; each seed's {runs[0].which} "
                 f"checkpoint. Seeds: {links}</p>\n<section id=\"summary\"><h2>Summary</h2>"
                 f"{_summary_section(workdir, summary)}</section>\n" + "\n".join(sections))


# ----------------------------------------------------------------------------------------------
# jaxcnn report
# ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workdir", help="a run's directory (of jaxcnn train --workdir)")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="which checkpoint to look at (default: best)")
    parser.add_argument("--data-dir", help="directory of the Fashion-MNIST .gz files")


def run(args: argparse.Namespace) -> int:
    write_report(args.workdir, args.which, data_dir=args.data_dir)
    return 0
