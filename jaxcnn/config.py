"""What to train: the run configuration and the recipes (the book's, and an improved one).

A ``Config`` is plain data: it is written to ``WORKDIR/config.json`` and compared field by field
when a run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from jaxcnn import models
from jaxcnn.names import setting

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
RECIPES = ("book", "improved")

NUM_CLASSES = 10      # Fashion-MNIST's
MAX_EPOCHS = 10_000   # beyond any sane run (the book's are 10): a typo, not a plan
MAX_IMAGE_SIZE = 4096 # Fashion-MNIST's images are 28 px; the book resizes them to 224 at most
POSITIVE = ("lr", "max_loss", "clip_norm")          # clip_norm may also be None
NON_NEGATIVE = ("momentum", "weight_decay", "warmup_epochs", "label_smoothing")

# Fields that may differ when a workdir is resumed: where things live, how often to save, how
# many devices, and the learning rate (lowering it rescues a diverged run from its last
# checkpoint).
RESUMABLE_FIELDS = ("data_dir", "checkpoint_every", "max_loss", "lr", "devices")


@dataclass(frozen=True)
class Config:
    """One training run. ``lr`` and ``image_size`` of ``None`` mean the model's book values."""

    model: str = "lenet"
    recipe: str = "book"
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9                # for optimizer "momentum"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0           # for schedule "warmup_cosine"
    clip_norm: float | None = None       # clip the global gradient norm
    label_smoothing: float = 0.0
    augment: bool = False                # random crop (pad 2 at 28x28) and horizontal flip
    image_size: int | None = None
    seed: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_examples: int | None = None    # train on the first N examples only (reduced runs)
    test_examples: int | None = None     # evaluate on the first N test images (reduced runs)
    val_examples: int = 0                # training images held out to validate (0: the test
                                         # set validates and picks the best, as in the book)
    data_dir: str | None = None          # where the Fashion-MNIST .gz files are (optional)
    checkpoint_every: int = 500          # steps between mid-epoch checkpoints (0: epochs only)
    max_loss: float = 1e3                # a loss above this (or non-finite) means divergence
    devices: int | None = None           # local devices per process (None: all)
    dtype: str = "float32"               # compute dtype; parameters stay float32

    def __post_init__(self) -> None:
        spec = models.spec(self.model)   # unknown model: ValueError listing the known ones
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict of constructor arguments, got "
                             f"{self.model_overrides!r}")
        try:   # a copy of its own, in the form config.json gives back (tuples as lists)
            overrides = json.loads(json.dumps(self.model_overrides))
        except (TypeError, ValueError) as error:
            raise ValueError(f"model_overrides must be JSON data (it is saved in config.json): "
                             f"{error}") from None
        object.__setattr__(self, "model_overrides", overrides)
        for name in ("image_size", "seed", "dtype"):
            if name in overrides:
                raise ValueError(f"{name} is a field of the config; set it there, not in "
                                 f"model_overrides")
        for name, value in (("num_classes", NUM_CLASSES), ("in_channels", 1)):
            if overrides.get(name, value) != value:
                raise ValueError(f"Fashion-MNIST needs {name} {value}; model_overrides has "
                                 f"{overrides[name]!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", spec.book_lr)
        if self.image_size is None:
            object.__setattr__(self, "image_size", spec.image_size)
        _choice("recipe", self.recipe, RECIPES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("dtype", self.dtype, models.COMPUTE_DTYPES)
        for name in ("epochs", "batch_size", "image_size"):
            _positive_int(name, getattr(self, name))
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"{setting('image_size')} must be at most {MAX_IMAGE_SIZE} "
                             f"(Fashion-MNIST's images are 28x28; the book resizes them to 224 "
                             f"at most), got {self.image_size!r}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"{setting('epochs')} must be at most {MAX_EPOCHS:,}, got "
                             f"{self.epochs!r}")
        _non_negative_int("checkpoint_every", self.checkpoint_every)
        _non_negative_int("val_examples", self.val_examples)
        _non_negative_int("seed", self.seed)
        if self.seed >= 2**32:     # jax.random.key keeps the low 32 bits: 2**32 is seed 0
            raise ValueError(f"{setting('seed')} must be below 2**32 (jax.random.key keeps a "
                             f"seed's low 32 bits), got {self.seed!r}")
        for name in ("devices", "train_examples", "test_examples"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.image_size < spec.min_image_size:
            raise ValueError(f"{setting('image_size')} {self.image_size} is too small for "
                             f"{self.model}: it needs at least {spec.min_image_size} (the book "
                             f"uses {spec.image_size})")
        for name in POSITIVE + NON_NEGATIVE:     # NumPy scalars as Python floats: JSON data
            value = getattr(self, name)
            if isinstance(value, Real) and not isinstance(value, (bool, int, float)):
                object.__setattr__(self, name, float(value))
        for name in POSITIVE:
            value = getattr(self, name)
            if not (value is None and name == "clip_norm"
                    or _real(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{setting(name)} must be a positive number, got {value!r}")
        for name in NON_NEGATIVE:
            value = getattr(self, name)
            if not (_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{setting(name)} must be a non-negative number, got {value!r}")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be below 1 (the share of the target taken "
                             f"from the true class), got {self.label_smoothing!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        if not isinstance(values, dict):
            raise ValueError(f"a config is a JSON object of fields; got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> Config:
        """The config saved at ``path`` (a run's ``config.json``); ``ValueError`` naming the file
        when it is not valid JSON or not a valid config."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (ValueError, TypeError) as error:   # json.JSONDecodeError is a ValueError
            raise ValueError(f"{str(path)!r} is not a valid jaxcnn config: {error}") from error

    def differences(self, other: Config) -> list[str]:
        """Fields (other than ``RESUMABLE_FIELDS``) whose values differ, as 'name: a != b'.
        ``epochs`` (``other``'s, the saved run's) may grow too when both keep the learning rate
        constant: no step so far depends on the epoch count then, so a run can be extended."""
        mine, theirs = self.to_dict(), other.to_dict()
        extends = self.schedule == other.schedule == "constant" and self.epochs >= other.epochs
        free = RESUMABLE_FIELDS + (("epochs",) if extends else ())
        return [f"{k}: {theirs[k]!r} != {mine[k]!r}" for k in mine
                if k not in free and mine[k] != theirs[k]]


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{setting(name)} must be one of {', '.join(choices)}; got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{setting(name)} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{setting(name)} must be a non-negative integer, got {value!r}")


# The improved recipes: what we change beyond the book, per model family. The LeNet family's
# batch size, learning rate, weight decay and label smoothing were chosen on a validation split
# (training images 50,000-59,999, the test set unseen; experiments/RESULTS.md).
_IMPROVED_LENET = dict(optimizer="adamw", lr=5e-3, weight_decay=0.05, schedule="cosine",
                       batch_size=64, label_smoothing=0.1, val_examples=5000,
                       model_overrides={"activation": "relu", "pool": "max"})
_IMPROVED_CNN = dict(optimizer="momentum", lr=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule="warmup_cosine", warmup_epochs=1.0, augment=True,
                     label_smoothing=0.1, val_examples=5000)
IMPROVED = {name: _IMPROVED_LENET for name in ("lenet", "bn_lenet", "bn_lenet_scratch")}


def recipe(model: str, name: str = "book", **overrides: Any) -> Config:
    """The config of recipe ``name`` for ``model``, with ``overrides`` (``None`` values are
    ignored, so command-line defaults pass through).

    ``book``: SGD at the book's learning rate, batch 128, 10 epochs, the book's image size;
    the test set validates (the book's practice).
    ``improved``: for the LeNet family, ReLU + max pooling + AdamW with a cosine schedule,
    batch 64 and label smoothing; for the others, SGD with momentum, weight decay, warm-up +
    cosine, augmentation and label smoothing. Both hold out 5,000 training images to
    validate and pick the best checkpoint, so the test set is only reported.
    """
    _choice("recipe", name, RECIPES)
    values: dict[str, Any] = {"model": model, "recipe": name}
    if name == "improved":
        values.update(IMPROVED.get(model, _IMPROVED_CNN))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
