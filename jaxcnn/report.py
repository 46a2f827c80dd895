"""What a run leaves for people: ``metrics.jsonl`` and ``curves.png``, rewritten atomically from
the metric history after every epoch (so a resumed run never duplicates or loses a line)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcnn.files import atomic_write  # noqa: F401  (re-exported: report.atomic_write)

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_acc", "images_per_s", "seconds")


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def write_metrics(workdir: Path, history: Sequence[dict]) -> None:
    """``WORKDIR/metrics.jsonl``: one JSON object per epoch."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(workdir / "metrics.jsonl", lambda f: f.write(text.encode()))


def read_metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(path: Path, history: Sequence[dict], title: str = "") -> None:
    """The book's training curves by epoch: train and validation loss, validation accuracy (and
    test accuracy where a held-out split validates). With label smoothing both losses are the
    smoothed objective, so that they compare like with like (``val_loss`` in the metrics is the
    plain cross-entropy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    smoothed = bool(history) and all("val_loss_smoothed" in r for r in history)
    suffix = " (label-smoothed)" if smoothed else ""
    marker = "o" if len(history) == 1 else None     # a single epoch is a point, not a line
    ax.plot(epochs, [r["train_loss"] for r in history], "-", marker=marker,
            label="train_loss" + suffix)
    ax.plot(epochs, [r["val_loss_smoothed" if smoothed else "val_loss"] for r in history], "--",
            marker=marker, label="val_loss" + suffix)
    ax.plot(epochs, [r["val_acc"] for r in history], "-.", marker=marker, label="val_acc")
    if history and all("test_acc" in r for r in history):
        ax.plot(epochs, [r["test_acc"] for r in history], ":", marker=marker, label="test_acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(0, max(epochs) if epochs else 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


SUMMARY_FIELDS = ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc")


def seed_summary(histories: Sequence[Sequence[dict]]) -> list[dict]:
    """Per epoch, over the seeds' metric histories that reached it: ``{"epoch", "seeds"}`` and,
    for each of ``SUMMARY_FIELDS`` every seed has, its ``mean``, ``sd`` (the sample standard
    deviation; 0 for one seed), ``min``, ``median`` and ``max``."""
    summary = []
    for epoch in range(1, max((len(h) for h in histories), default=0) + 1):
        rows = [h[epoch - 1] for h in histories if len(h) >= epoch]
        entry: dict[str, Any] = {"epoch": epoch, "seeds": len(rows)}
        for name in SUMMARY_FIELDS:
            if all(name in row for row in rows):
                values = [row[name] for row in rows]
                entry[name] = {"mean": statistics.fmean(values),
                               "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                               "min": min(values), "median": statistics.median(values),
                               "max": max(values)}
        summary.append(entry)
    return summary


def plot_seed_curves(path: Path, summary: Sequence[dict], title: str = "") -> None:
    """The mean curves over seeds (``seed_summary``), each with its min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in summary]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, style in (("train_loss", "-"), ("val_loss", "--"), ("val_acc", "-."),
                        ("test_acc", ":")):
        if summary and all(name in row for row in summary):
            line, = ax.plot(epochs, [r[name]["mean"] for r in summary], style,
                            label=f"{name} (mean)")
            ax.fill_between(epochs, [r[name]["min"] for r in summary],
                            [r[name]["max"] for r in summary], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    seeds = max((row["seeds"] for row in summary), default=0)
    ax.set_xlabel(f"epoch  (band: min-max over {seeds} seeds)")
    ax.set_xlim(0, max(epochs) if epochs else 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
