"""Training: one pure jitted Optax step over state pytrees, exact evaluation, and ``fit``.

The model is split once (``nnx.split``) into a static graph, its parameters, its BatchNorm
statistics and the rest (constant). The train state is a plain dict pytree
``{"params", "batch_stats", "opt_state", "step"}``; ``train_step(state, batch)`` contains the
on-device resize/normalise (and augmentation), forward, cross-entropy, backward and the Optax
update, and donates the old state's buffers. Randomness per step is
``fold_in(key(seed), step)``, so a resumed run draws the same numbers as an uninterrupted one.
``load_model(workdir)`` gives a finished run's model back as an NNX module.
"""

from __future__ import annotations

import itertools
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxcnn import data, models, parallel, report
from jaxcnn.augment import random_crop_flip
from jaxcnn.checkpoints import Checkpoints, abstract
from jaxcnn.config import Config

Batch = dict[str, Any]     # {"image": uint8 (B, 28, 28, 1), "label": int32 (B,), "mask": bool (B,)}
State = dict[str, Any]     # {"params", "batch_stats", "opt_state", "step"}
SYNC_EVERY = 50            # steps between reading the losses back to the host


class DivergenceError(RuntimeError):
    """The training loss became non-finite or exceeded ``Config.max_loss``."""


def make_optimizer(cfg: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD (the book's) or momentum / Adam / AdamW, with the configured schedule, coupled weight
    decay (AdamW: decoupled) and optional global-norm clipping."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        lr: Any = cfg.lr
    elif cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.lr, total)
    else:
        warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay))
    else:
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append({"sgd": optax.sgd(lr), "adam": optax.adam(lr),
                      "momentum": optax.sgd(lr, momentum=cfg.momentum)}[cfg.optimizer])
    return optax.chain(*parts)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, ``(B, K)``, ``(B,)`` -> ``(B,)``."""
    if smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class Trainer:
    """The static parts of a run (graph, optimizer, image size, key, device mesh) and its pure
    steps.

    ``train_step(state, batch) -> (state, loss)`` and ``eval_step(state, batch) -> sums`` run
    the jitted steps on a host batch sharded over ``mesh`` (default: ``cfg.devices`` local
    devices of every process); the state stays replicated. ``train_step_fn`` /
    ``eval_step_fn`` are the pure functions unjitted. ``train_step`` donates its input state:
    pass ``initial_state`` once, or a copy.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int, mesh: jax.sharding.Mesh | None = None):
        self.cfg = cfg
        self.mesh = parallel.make_mesh(cfg.devices) if mesh is None else mesh
        parallel.check_batch_size(cfg.batch_size, self.mesh)
        model = models.create(cfg.model, image_size=cfg.image_size, seed=cfg.seed,
                              dtype=cfg.dtype, **cfg.model_overrides)
        self.graphdef, params, batch_stats, self.constants = nnx.split(
            model, nnx.Param, nnx.BatchStat, ...)
        self.tx = make_optimizer(cfg, steps_per_epoch)
        self.key = jax.random.fold_in(jax.random.key(cfg.seed), 1)   # 0 made the parameters
        self.initial_state: State = parallel.replicate(
            {"params": params, "batch_stats": batch_stats, "opt_state": self.tx.init(params),
             "step": jnp.zeros((), jnp.int32)}, self.mesh)
        replicated = parallel.replicated(self.mesh)
        self._train_step = jax.jit(self.train_step_fn, donate_argnums=0,
                                   out_shardings=replicated)
        self._eval_step = jax.jit(self.eval_step_fn, out_shardings=replicated)

    def train_step(self, state: State, batch: Batch) -> tuple[State, jax.Array]:
        """One jitted step on a host batch (the global batch; sharded over the mesh here)."""
        return self._train_step(state, parallel.shard_batch(batch, self.mesh))

    def eval_step(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        return self._eval_step(state, parallel.shard_batch(batch, self.mesh))

    def _model(self, state: State, train: bool) -> nnx.Module:
        model = nnx.merge(self.graphdef, state["params"], state["batch_stats"], self.constants,
                          copy=True)   # fresh Variables at the current trace level
        model.train() if train else model.eval()
        return model

    def train_step_fn(self, state: State, batch: Batch) -> tuple[State, jax.Array]:
        key_augment, key_dropout = jax.random.split(jax.random.fold_in(self.key, state["step"]))
        images = batch["image"]
        if self.cfg.augment:
            images = random_crop_flip(images, key_augment)
        images = data.preprocess(images, self.cfg.image_size)

        model = self._model(state, train=True)

        def loss_fn(model):
            logits = model(images, rngs=nnx.Rngs(dropout=key_dropout)).astype(jnp.float32)
            return cross_entropy(logits, batch["label"], self.cfg.label_smoothing).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)     # BatchNorm updates land in model
        batch_stats = nnx.state(model, nnx.BatchStat)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                "step": state["step"] + 1}, loss

    def eval_step_fn(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        """Sums over the batch's real (mask True) examples: loss, correct predictions, count."""
        logits = self._model(state, train=False)(
            data.preprocess(batch["image"], self.cfg.image_size)).astype(jnp.float32)
        mask = batch["mask"]
        losses = cross_entropy(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
        return {"loss_sum": jnp.where(mask, losses, 0.0).sum(),
                "correct": correct.sum(), "count": mask.sum()}

    def evaluate(self, state: State, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) over every example exactly once, counted over the whole split."""
        totals = None
        for batch in data.batches(images, labels, self.cfg.batch_size, train=False):
            sums = self.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.tree.map(parallel.to_host, totals)
        count = int(totals["count"])
        if count != len(images):
            raise AssertionError(f"evaluated {count} examples, expected {len(images)}")
        return float(totals["loss_sum"]) / count, int(totals["correct"]) / count


# ----------------------------------------------------------------------------------------------
# The fit loop
# ----------------------------------------------------------------------------------------------

def _prepare_workdir(workdir: Path, cfg: Config, force_new: bool, main: bool) -> None:
    """Create ``workdir``, refuse to resume an incompatible config, start over if asked. Only
    the main process writes; the others wait for it."""
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {str(workdir)!r} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{jax.process_index()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(f"workdir {str(workdir)!r} is not writable: "
                      f"{error.strerror or error}") from error
    config_path = workdir / "config.json"
    if not force_new and config_path.exists() and (workdir / "checkpoints").exists():
        try:
            saved = Config.read(config_path)
        except ValueError as error:
            raise ValueError(f"{error}; use another --workdir, or --force-new to start "
                             f"over") from error
        differences = cfg.differences(saved)
        if differences:
            raise ValueError(f"workdir {str(workdir)!r} holds a run with a different config "
                             f"({'; '.join(differences)}); use another --workdir, or "
                             f"--force-new to start over")
    if main:
        if force_new:
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
            for name in ("metrics.jsonl", "curves.png", "config.json"):
                (workdir / name).unlink(missing_ok=True)
        for leftover in workdir.glob(".*.tmp"):      # partial writes of a killed run
            leftover.unlink()
        report.write_json(config_path, cfg.to_dict())
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxcnn: workdir prepared")


def _progress(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
                disable=not enabled, dynamic_ncols=True)


def _splits(cfg: Config) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train images, labels), (test images, labels): uint8 ``(N, 28, 28, 1)``, int32 ``(N,)``,
    cut to ``cfg.train_examples`` / ``cfg.test_examples`` for reduced runs."""
    (train_images, train_labels), (test_images, test_labels) = (
        data.fashion_mnist(split, cfg.data_dir) for split in ("train", "test"))
    for name, wanted, available in (("train_examples", cfg.train_examples, len(train_images)),
                                    ("test_examples", cfg.test_examples, len(test_images))):
        if wanted is not None and wanted > available:
            raise ValueError(f"{name} {wanted} is more than the {available:,} images of the "
                             f"{name.split('_')[0]} split")
    return ((train_images[:cfg.train_examples], train_labels[:cfg.train_examples]),
            (test_images[:cfg.test_examples], test_labels[:cfg.test_examples]))


def _train_epoch(trainer: Trainer, state: State, batches: Iterator[Batch], *, epoch: int,
                 first: int, loss_sum: float, steps_per_epoch: int, bar: tqdm,
                 checkpoints: Checkpoints, meta: dict) -> tuple[State, float]:
    """Steps ``first`` to the end of ``epoch`` over ``batches`` (the epoch's, from its start).

    Reads the losses back every ``SYNC_EVERY`` steps (raising ``DivergenceError`` on a bad
    one), updates ``bar``, and saves a checkpoint at the mid-epoch checkpoint steps (``meta``
    with the position and loss sum so far). Returns the state and the epoch's loss sum.
    """
    cfg, start = trainer.cfg, time.perf_counter()
    pending: list[jax.Array] = []
    for index, batch in enumerate(itertools.islice(batches, first, None), start=first):
        state, loss = trainer.train_step(state, batch)
        pending.append(loss)
        done = index + 1
        step = epoch * steps_per_epoch + done
        save_now = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                    and done < steps_per_epoch)
        if len(pending) == SYNC_EVERY or done == steps_per_epoch or save_now:
            losses = [float(parallel.to_host(v)) for v in pending]
            for offset, value in enumerate(losses):
                if not (math.isfinite(value) and value <= cfg.max_loss):
                    raise DivergenceError(_divergence_message(
                        value, step - len(losses) + offset + 1, cfg, checkpoints))
                loss_sum += value
            rate = (done - first) * cfg.batch_size / (time.perf_counter() - start)
            bar.update(len(losses))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{rate:,.0f}")
            pending = []
        if save_now:
            checkpoints.save(step, state, {**meta, "epoch": epoch, "step_in_epoch": done,
                                           "loss_sum": loss_sum})
    return state, loss_sum


def fit(cfg: Config, workdir: str | Path, *, force_new: bool = False,
        progress: bool | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Train ``cfg`` on Fashion-MNIST, evaluating on all 10,000 test images after each epoch
    (``cfg.train_examples`` / ``cfg.test_examples`` cut both splits for reduced runs).

    Leaves ``WORKDIR/metrics.jsonl``, ``curves.png``, ``config.json`` and Orbax checkpoints in
    ``WORKDIR/checkpoints/{latest,best}``; resumes from the latest checkpoint when the workdir
    holds one of the same config. ``progress`` (default: stderr is a terminal) shows a bar.
    In a multi-process run every process calls ``fit``; only process 0 logs and writes files
    (Orbax coordinates the checkpoints). Returns the metric history, one dict per epoch.
    """
    workdir = Path(workdir)
    main = jax.process_index() == 0
    log = log if main else (lambda message: None)
    # The data and the model first: their errors come before anything is written.
    (train_images, train_labels), (test_images, test_labels) = _splits(cfg)
    steps_per_epoch = data.num_batches(len(train_images), cfg.batch_size, train=True)
    trainer = Trainer(cfg, steps_per_epoch)
    _prepare_workdir(workdir, cfg, force_new, main)
    checkpoints = Checkpoints(workdir / "checkpoints")
    progress = main and (sys.stderr.isatty() if progress is None else progress)

    restored = checkpoints.restore(abstract(trainer.initial_state))
    if restored is None:
        state = trainer.initial_state
        meta = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "history": [],
                "best_val_acc": None}
    else:
        state, meta = restored
        if meta["epoch"] >= cfg.epochs:
            extend = ("a larger --epochs extends it, " if cfg.schedule == "constant" else "")
            log(f"{workdir} holds this run, finished at epoch {meta['epoch']}: nothing to "
                f"train ({extend}--force-new starts over)")
        else:
            log(f"resuming {workdir} at epoch {meta['epoch'] + 1}, step "
                f"{meta['epoch'] * steps_per_epoch + meta['step_in_epoch']}")
    history = list(meta["history"])
    if main:
        report.write_metrics(workdir, history)

    try:
        for epoch in range(meta["epoch"], cfg.epochs):
            resume_here = epoch == meta["epoch"]
            first = meta["step_in_epoch"] if resume_here else 0
            start = time.perf_counter()
            batches = data.batches(train_images, train_labels, cfg.batch_size, seed=cfg.seed,
                                   epoch=epoch, train=True)
            with _progress(steps_per_epoch, first, f"epoch {epoch + 1}/{cfg.epochs}",
                           progress) as bar:
                state, loss_sum = _train_epoch(
                    trainer, state, batches, epoch=epoch, first=first,
                    loss_sum=meta["loss_sum"] if resume_here else 0.0,
                    steps_per_epoch=steps_per_epoch, bar=bar, checkpoints=checkpoints,
                    meta={**meta, "history": history})
            train_seconds = time.perf_counter() - start
            val_loss, val_acc = trainer.evaluate(state, test_images, test_labels)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch,
                   "val_loss": val_loss, "val_acc": val_acc,
                   "images_per_s": (steps_per_epoch - first) * cfg.batch_size / train_seconds,
                   "seconds": time.perf_counter() - start}
            history.append(row)
            best = meta["best_val_acc"] is None or val_acc > meta["best_val_acc"]
            meta = {"epoch": epoch + 1, "step_in_epoch": 0, "loss_sum": 0.0, "history": history,
                    "best_val_acc": val_acc if best else meta["best_val_acc"]}
            checkpoints.save((epoch + 1) * steps_per_epoch, state, meta, best=best)
            if main:
                report.write_metrics(workdir, history)
                report.plot_curves(workdir / "curves.png", history,
                                   f"{cfg.model}, {cfg.recipe} recipe, lr {cfg.lr}")
            log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  "
                f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s")
    finally:
        checkpoints.close()
    return history


def _divergence_message(value: float, step: int, cfg: Config, checkpoints: Checkpoints) -> str:
    last = checkpoints.latest.latest_step()
    where = (f"the last good checkpoint is step {last} in {checkpoints.directory / 'latest'}"
             if last is not None else "no checkpoint was saved before it")
    return (f"training diverged: the loss became {value:.4g} at step {step} (non-finite or above "
            f"max_loss {cfg.max_loss:g}); {where}. Run the same command with a lower --lr "
            f"(now {cfg.lr:g}): it resumes from there (--force-new starts over)")


def _restore_workdir(workdir: str | Path, which: str) -> tuple[Trainer, State, dict]:
    """The run in ``workdir``: its trainer, and the state and meta of its ``which`` checkpoint
    ('best' or 'latest'); ``FileNotFoundError`` when it is not a workdir or holds none."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {str(workdir)!r} does not exist (or is not a "
                                f"directory)")
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(workdir)!r} holds no config.json: not a jaxcnn workdir")
    cfg = Config.read(config_path)
    trainer = Trainer(cfg, data.num_batches(60_000, cfg.batch_size, train=True))
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        restored = checkpoints.restore(abstract(trainer.initial_state), which=which)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{str(workdir)!r} holds no checkpoint yet")
    return trainer, *restored


def load_model(workdir: str | Path, which: str = "best") -> nnx.Module:
    """The trained model of a run, from ``workdir``'s ``which`` checkpoint ('best' or
    'latest'), in eval mode: ``models.create`` with the run's config, its parameters and
    BatchNorm statistics. Input: float32 NHWC images in [0, 1] at the run's size,
    ``data.preprocess(uint8_images, cfg.image_size)``; output: logits ``(N, 10)``."""
    trainer, state, _ = _restore_workdir(workdir, which)
    return trainer._model(state, train=False)


def evaluate_workdir(workdir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Test loss and accuracy of the best checkpoint in ``workdir``, on all test images."""
    trainer, state, meta = _restore_workdir(workdir, "best")
    cfg = trainer.cfg
    test_images, test_labels = data.fashion_mnist("test", data_dir or cfg.data_dir)
    loss, acc = trainer.evaluate(state, test_images, test_labels)
    return {"model": cfg.model, "epoch": meta["epoch"],
            "step": int(parallel.to_host(state["step"])), "test_loss": loss, "test_acc": acc,
            "test_examples": len(test_images)}
