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

import contextlib
import itertools
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxcnn import data, models, parallel, report, summary
from jaxcnn import workdir as workdir_rules
from jaxcnn.augment import random_crop_flip
from jaxcnn.checkpoints import CheckpointError, CheckpointMismatchError, Checkpoints, abstract
from jaxcnn.config import Config
from jaxcnn.names import setting, switch

Batch = dict[str, Any]     # {"image": uint8 (B, 28, 28, 1), "label": int32 (B,), "mask": bool (B,)}
State = dict[str, Any]     # {"params", "batch_stats", "opt_state", "step"}
SYNC_EVERY = 50            # steps between reading the losses back to the host


class Evaluation(NamedTuple):
    """A split's mean cross-entropy, accuracy, and mean label-smoothed cross-entropy (the
    training objective; equal to ``loss`` without smoothing)."""

    loss: float
    acc: float
    smoothed_loss: float


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
        """Sums over the batch's real (mask True) examples: loss, the label-smoothed loss the
        training minimises, correct predictions, count."""
        logits = self._model(state, train=False)(
            data.preprocess(batch["image"], self.cfg.image_size)).astype(jnp.float32)
        mask = batch["mask"]
        losses = cross_entropy(logits, batch["label"])
        smoothed = cross_entropy(logits, batch["label"], self.cfg.label_smoothing)
        correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
        return {"loss_sum": jnp.where(mask, losses, 0.0).sum(),
                "smoothed_loss_sum": jnp.where(mask, smoothed, 0.0).sum(),
                "correct": correct.sum(), "count": mask.sum()}

    def evaluate(self, state: State, images: np.ndarray, labels: np.ndarray) -> Evaluation:
        """Mean loss (and label-smoothed loss) and accuracy over every example exactly once,
        counted over the whole split."""
        totals = None
        for batch in data.batches(images, labels, self.cfg.batch_size, train=False):
            sums = self.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.tree.map(parallel.to_host, totals)
        count = int(totals["count"])
        if count != len(images):
            raise AssertionError(f"evaluated {count} examples, expected {len(images)}")
        return Evaluation(float(totals["loss_sum"]) / count, int(totals["correct"]) / count,
                          float(totals["smoothed_loss_sum"]) / count)


# ----------------------------------------------------------------------------------------------
# The fit loop
# ----------------------------------------------------------------------------------------------

VAL_SPLIT_SEED = 20_261_201   # which training images a validation split holds out: fixed, so
                              # the same ones for every seed and every run
ROW_CONFIG = ("lr", "epochs", "checkpoint_every", "max_loss")   # fields that may change on
                                                                 # resume, in every metrics row


class OutOfMemoryError(ValueError):
    """The train step does not fit in the device's memory."""


class Splits(NamedTuple):
    """uint8 images ``(N, 28, 28, 1)`` and int32 labels ``(N,)`` of each part; ``val`` is None
    when the test set validates (the book's practice)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]


def splits(cfg: Config) -> Splits:
    """The data of a run: ``cfg.val_examples`` training images held out (the same ones for
    every seed, chosen by ``VAL_SPLIT_SEED``), the rest cut to ``cfg.train_examples``; the test
    images cut to ``cfg.test_examples``. Without a held-out split the test set validates."""
    (train_images, train_labels), (test_images, test_labels) = (
        data.fashion_mnist(split, cfg.data_dir) for split in ("train", "test"))
    val = None
    if cfg.val_examples:
        n = len(train_images)
        if cfg.val_examples >= n:
            raise ValueError(f"{setting('val_examples')} {cfg.val_examples:,} leaves none of "
                             f"the {n:,} training images to train on")
        held = np.zeros(n, bool)
        held[np.random.default_rng(VAL_SPLIT_SEED).permutation(n)[:cfg.val_examples]] = True
        val = train_images[held], train_labels[held]
        train_images, train_labels = train_images[~held], train_labels[~held]
    held_out = f" left after holding out {cfg.val_examples:,} to validate" if val else ""
    for name, wanted, available, split in (
            ("train_examples", cfg.train_examples, len(train_images), f"training split{held_out}"),
            ("test_examples", cfg.test_examples, len(test_images), "test split")):
        if wanted is not None and wanted > available:
            raise ValueError(f"{setting(name)} {wanted:,} is more than the {available:,} "
                             f"images of the {split}")
    return Splits((train_images[:cfg.train_examples], train_labels[:cfg.train_examples]), val,
                  (test_images[:cfg.test_examples], test_labels[:cfg.test_examples]))


def _check_memory(trainer: Trainer, batch_size: int) -> None:
    """``OutOfMemoryError`` when the train step's largest array alone exceeds the memory of
    the device it runs on (a lower bound on what the step needs; a bigger run that still
    fails is caught where it fails)."""
    batch = {"image": jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.uint8),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
    jaxpr = jax.make_jaxpr(trainer.train_step_fn)(abstract(trainer.initial_state), batch)
    needed = summary.largest_array_bytes(jaxpr.jaxpr) / trainer.mesh.size
    available = _device_memory(trainer.mesh.devices.flat[0])
    if available and needed > available:
        raise OutOfMemoryError(_memory_message(trainer.cfg, f"at least {needed / 2**30:,.1f} GiB "
                                               f"(its largest array alone)", available))


def _device_memory(device: jax.Device) -> int | None:
    """Bytes of memory ``device`` has: its allocator's limit, or the host's RAM for a CPU."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _memory_message(cfg: Config, needed: str, available: int | None) -> str:
    has = f"; the device has {available / 2**30:,.1f} GiB" if available else ""
    return (f"the train step of {cfg.model} at image_size {cfg.image_size} and batch_size "
            f"{cfg.batch_size} needs {needed}{has}: lower the image size or the batch size")


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _progress(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
                disable=not enabled, dynamic_ncols=True)


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


def _new_meta(cfg: Config) -> dict:
    return {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "history": [],
            "best_val_acc": None, "best_step": None, "run_id": uuid.uuid4().hex,
            "config": cfg.to_dict()}


def _resume(trainer: Trainer, checkpoints: Checkpoints, workdir: Path,
            log: Callable[[str], None]) -> tuple[State, dict]:
    """The run's state and meta from ``latest`` (a new run's when there is none), with
    ``best`` checked to belong to it and to be readable (re-saved from ``latest`` or dropped
    otherwise). ``ValueError`` when the checkpoint was trained with another config."""
    cfg = trainer.cfg
    saved = workdir / "config.json"
    try:
        written = Config.read(saved) if saved.exists() else None
    except ValueError as error:
        raise ValueError(f"{error}; use another {setting('workdir')}, or "
                         f"{switch('force_new')} to start over") from error
    found = checkpoints.read_meta("latest")
    trained = (Config.from_dict(found[1]["config"]) if found and "config" in found[1]
               else written if found else None)      # (checkpoints from before configs in meta)
    differences = cfg.differences(trained) if trained is not None else []
    if differences:
        raise ValueError(f"workdir {str(workdir)!r} holds a run with a different config "
                         f"({'; '.join(differences)}); use another {setting('workdir')}, or "
                         f"{switch('force_new')} to start over")
    restored = checkpoints.restore(abstract(trainer.initial_state))
    if restored is None:
        if checkpoints.steps("best"):
            checkpoints.drop("best", "there is no latest checkpoint, so the best one belongs to "
                                     "an earlier run of this workdir")
        if (workdir / "metrics.jsonl").exists() and report.read_metrics(workdir):
            log(f"{workdir / 'checkpoints' / 'latest'} holds no checkpoint: starting the run "
                f"over (its metrics.jsonl is rewritten)")
        return trainer.initial_state, _new_meta(cfg)
    state, meta = restored
    meta = {"best_step": None, "run_id": None, **meta, "config": cfg.to_dict()}
    _check_best(trainer, checkpoints, state, meta)
    return state, meta


def _check_best(trainer: Trainer, checkpoints: Checkpoints, state: State, meta: dict) -> None:
    """Make ``best`` the run's own readable best checkpoint: a best of another run is dropped;
    a lost or damaged one is saved again when ``state`` is it, else forgotten (a later epoch
    becomes the best), with a warning."""
    found = checkpoints.read_meta("best")
    if found is not None and found[1].get("run_id") != meta["run_id"]:
        checkpoints.drop("best", "the best checkpoint belongs to another run than latest's")
        found = None
    if found is not None:
        try:
            checkpoints.restore(abstract(trainer.initial_state), which="best")
            return
        except CheckpointMismatchError:
            raise
        except CheckpointError:
            pass                               # reported and moved aside by restore
    if meta["best_val_acc"] is None:
        return
    step = int(parallel.to_host(state["step"]))
    if meta["best_step"] == step:
        checkpoints.save(step, state, meta, best=True)
        checkpoints.warn(f"the best checkpoint (step {step}) was missing or unreadable; saved "
                         f"it again from the latest one, which is the same state")
    else:
        checkpoints.warn(f"the best checkpoint (val_acc {meta['best_val_acc']:.4f}) is missing "
                         f"or unreadable and cannot be rebuilt; the best epoch from now on "
                         f"becomes the best checkpoint")
        meta["best_val_acc"] = meta["best_step"] = None


def _row(cfg: Config, trainer: Trainer, **values: Any) -> dict[str, Any]:
    return {**values, **{name: getattr(cfg, name) for name in ROW_CONFIG},
            "devices": trainer.mesh.size}


def _title(cfg: Config, history: list[dict]) -> str:
    lrs = list(dict.fromkeys(row.get("lr", cfg.lr) for row in history)) or [cfg.lr]
    return f"{cfg.model}, {cfg.recipe} recipe, lr {', '.join(f'{lr:g}' for lr in lrs)}"


def fit(cfg: Config, workdir: str | Path, *, force_new: bool = False,
        progress: bool | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Train ``cfg`` on Fashion-MNIST, validating after each epoch on ``cfg.val_examples``
    held-out training images (and reporting the test set), or on all test images when there
    is no held-out split (the book's practice); the best checkpoint is chosen on validation.

    Leaves ``WORKDIR/metrics.jsonl``, ``curves.png``, ``config.json`` and Orbax checkpoints in
    ``WORKDIR/checkpoints/{latest,best}``; resumes from the latest checkpoint when the workdir
    holds one of the same config. One run at a time: a workdir in use by a live run raises
    ``workdir.WorkdirBusyError``. ``progress`` (default: stderr is a terminal) shows a bar.
    In a multi-process run every process calls ``fit``; only process 0 logs, writes files and
    holds the lock (Orbax coordinates the checkpoints). Returns the metric history, one dict
    per epoch.
    """
    workdir = Path(workdir)
    main = jax.process_index() == 0
    log = log if main else (lambda message: None)
    # The data, the model and the memory check first: their errors come before any writing.
    parts = splits(cfg)
    train_images, train_labels = parts.train
    steps_per_epoch = data.num_batches(len(train_images), cfg.batch_size, train=True)
    trainer = Trainer(cfg, steps_per_epoch)
    _check_memory(trainer, cfg.batch_size)
    workdir_rules.create(workdir)
    with workdir_rules.WorkdirLock(workdir) if main else contextlib.nullcontext():
        if main:
            if force_new:
                workdir_rules.start_over(workdir)
            workdir_rules.remove_partial_writes(workdir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxcnn: workdir prepared")
        checkpoints = Checkpoints(workdir / "checkpoints")
        try:
            return _fit(trainer, checkpoints, parts, workdir, steps_per_epoch, main, log,
                        main and (sys.stderr.isatty() if progress is None else progress))
        except jax.errors.JaxRuntimeError as error:
            if _is_out_of_memory(error):
                raise OutOfMemoryError(_memory_message(
                    cfg, f"more memory than there is ({str(error).splitlines()[0][:200]})",
                    _device_memory(trainer.mesh.devices.flat[0]))) from error
            raise
        finally:
            checkpoints.close()


def _fit(trainer: Trainer, checkpoints: Checkpoints, parts: Splits, workdir: Path,
         steps_per_epoch: int, main: bool, log: Callable[[str], None],
         progress: bool) -> list[dict]:
    cfg = trainer.cfg
    state, meta = _resume(trainer, checkpoints, workdir, log)
    if meta["epoch"] >= cfg.epochs:
        extend = (f"a larger {setting('epochs')} extends it, " if cfg.schedule == "constant"
                  else "")
        log(f"{workdir} holds this run, finished at epoch {meta['epoch']}: nothing to train "
            f"({extend}{switch('force_new')} starts over)")
        return list(meta["history"])
    if meta["history"] or meta["step_in_epoch"]:
        log(f"resuming {workdir} at epoch {meta['epoch'] + 1}, step "
            f"{meta['epoch'] * steps_per_epoch + meta['step_in_epoch']}")
    history = list(meta["history"])
    if main:
        report.write_json(workdir / "config.json", cfg.to_dict())
        report.write_metrics(workdir, history)
    (train_images, train_labels), val, test = parts
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
        validation = trainer.evaluate(state, *(val or test))
        row = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch,
               "val_loss": validation.loss, "val_acc": validation.acc}
        if cfg.label_smoothing:
            row["val_loss_smoothed"] = validation.smoothed_loss
        if val is not None:
            tested = trainer.evaluate(state, *test)
            row.update(test_loss=tested.loss, test_acc=tested.acc)
        row = _row(cfg, trainer, **row,
                   images_per_s=(steps_per_epoch - first) * cfg.batch_size / train_seconds,
                   seconds=time.perf_counter() - start)
        history.append(row)
        best = meta["best_val_acc"] is None or validation.acc > meta["best_val_acc"]
        step = (epoch + 1) * steps_per_epoch
        meta = {**meta, "epoch": epoch + 1, "step_in_epoch": 0, "loss_sum": 0.0,
                "history": history}
        if best:
            meta.update(best_val_acc=validation.acc, best_step=step)
        checkpoints.save(step, state, meta, best=best)
        if main:
            report.write_metrics(workdir, history)
            report.plot_curves(workdir / "curves.png", history, _title(cfg, history))
        tested = (f"  test_acc {row['test_acc']:.4f}" if "test_acc" in row else "")
        log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {validation.loss:.4f}  val_acc {validation.acc:.4f}{tested}  "
            f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f} s")
    return history


def _divergence_message(value: float, step: int, cfg: Config, checkpoints: Checkpoints) -> str:
    steps = checkpoints.steps("latest")
    where = (f"the last good checkpoint is step {steps[-1]} in "
             f"{checkpoints.directory / 'latest'}" if steps
             else "no checkpoint was saved before it")
    return (f"training diverged: the loss became {value:.4g} at step {step} (non-finite or above "
            f"max_loss {cfg.max_loss:g}); {where}. Run it again with a lower {setting('lr')} "
            f"(now {cfg.lr:g}): it resumes from there ({switch('force_new')} starts over)")


def _restore_workdir(workdir: str | Path, which: str) -> tuple[Trainer, State, dict]:
    """The run in ``workdir``: its trainer, and the state and meta of its ``which`` checkpoint
    ('best' or 'latest'), built with the config that trained that checkpoint.
    ``FileNotFoundError`` when it is not a workdir or holds none; ``ValueError`` when
    ``config.json`` was changed after the checkpoint was written. Reads only (no lock)."""
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
    checkpoints = Checkpoints(workdir / "checkpoints", writable=False)
    try:
        found = checkpoints.read_meta(which)
        if found is None:
            other = "latest" if which == "best" else "best"
            hint = (f" (its {other} checkpoint is there: use which={other!r})"
                    if checkpoints.read_meta(other) else "")
            raise FileNotFoundError(f"{str(workdir)!r} holds no readable {which} checkpoint"
                                    f"{hint}")
        if "config" in found[1]:
            trained = Config.from_dict(found[1]["config"])
            differences = cfg.differences(trained)
            if differences:
                raise ValueError(f"{config_path} differs from the config that trained its "
                                 f"{which} checkpoint ({'; '.join(differences)}): it was "
                                 f"changed after training; restore it")
            cfg = trained
        trainer = Trainer(cfg, data.num_batches(60_000, cfg.batch_size, train=True))
        try:
            restored = checkpoints.restore(abstract(trainer.initial_state), which=which)
        except CheckpointMismatchError:
            raise
        except CheckpointError as error:
            other = "latest" if which == "best" else "best"
            raise CheckpointError(f"{error}; the {other} checkpoint may still read: "
                                  f"which={other!r}") from None
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


def evaluate_workdir(workdir: str | Path, data_dir: str | None = None,
                     which: str = "best") -> dict[str, Any]:
    """Test loss and accuracy of ``workdir``'s ``which`` checkpoint, on all test images."""
    trainer, state, meta = _restore_workdir(workdir, which)
    cfg = trainer.cfg
    test_images, test_labels = data.fashion_mnist("test", data_dir or cfg.data_dir)
    result = trainer.evaluate(state, test_images, test_labels)
    return {"model": cfg.model, "which": which, "epoch": meta["epoch"],
            "step": int(parallel.to_host(state["step"])), "test_loss": result.loss,
            "test_acc": result.acc, "test_examples": len(test_images)}
