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
import dataclasses
import functools
import itertools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
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


def init_state(cfg: Config, tx: optax.GradientTransformation,
               key: jax.Array) -> tuple[State, nnx.State]:
    """A seed's initial train state from its key, ``jax.random.key(seed)``, split once into
    the parameters' key and the training key (augmentation and dropout, folded with the step).
    Pure, so ``jax.vmap`` over keys makes many seeds' stacked states. Returns the state and
    the model's other variables (the Dropout layers' own keys, which the steps never use)."""
    init_key, train_key = jax.random.split(key)
    model = models.create(cfg.model, image_size=cfg.image_size, dtype=cfg.dtype,
                          rngs=nnx.Rngs(init_key), **cfg.model_overrides)
    _, params, batch_stats, constants = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32), "key": jax.random.key_data(train_key)}, constants


class Trainer:
    """The static parts of a run (graph, optimizer, image size, device mesh) and its pure
    steps; everything that changes (parameters, statistics, optimizer state, step, the
    training key) is in the state.

    ``train_step(state, batch) -> (state, loss)`` and ``eval_step(state, batch) -> sums`` run
    the jitted steps on a host batch sharded over ``mesh`` (default: ``cfg.devices`` local
    devices of every process); the state stays replicated. ``train_step_fn`` /
    ``eval_step_fn`` are the pure functions unjitted. ``train_step`` donates its input state:
    pass ``initial_state`` (``cfg.seed``'s; ``init(seed)`` gives another seed's) once, or a
    copy. ``group(states, mode)`` trains several seeds' states in lock step.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int, mesh: jax.sharding.Mesh | None = None):
        self.cfg = cfg
        self.mesh = parallel.make_mesh(cfg.devices) if mesh is None else mesh
        parallel.check_batch_size(cfg.batch_size, self.mesh)
        self.tx = make_optimizer(cfg, steps_per_epoch)
        # Eagerly: each op's small program is compiled once and shared by every model and
        # size, where a jitted init compiles anew for each (seconds on a CPU).
        self._init = functools.partial(init_state, cfg, self.tx)
        abstract_model = nnx.eval_shape(lambda: models.create(
            cfg.model, image_size=cfg.image_size, dtype=cfg.dtype, **cfg.model_overrides))
        self.graphdef = nnx.split(abstract_model, nnx.Param, nnx.BatchStat, ...)[0]
        replicated = parallel.replicated(self.mesh)
        self._train_step = jax.jit(self.train_step_fn, donate_argnums=0,
                                   out_shardings=replicated)
        self._eval_step = jax.jit(self.eval_step_fn, out_shardings=replicated)
        self._vmapped: tuple[Callable, Callable] | None = None
        self._scans: dict[bool, Callable] = {}

    @functools.cached_property
    def _first(self) -> tuple[State, nnx.State]:
        return self._init(jax.random.key(self.cfg.seed))

    @functools.cached_property
    def initial_state(self) -> State:
        """``cfg.seed``'s initial state, replicated over the mesh (made on first use)."""
        return parallel.replicate(self._first[0], self.mesh)

    @functools.cached_property
    def constants(self) -> nnx.State:
        """The model's variables that are neither parameters nor statistics (see
        ``init_state``)."""
        return self._first[1]

    @functools.cached_property
    def abstract_state(self) -> State:
        """The train state's shapes and dtypes (a checkpoint's restore target), made without
        computing it."""
        return abstract(jax.eval_shape(self._init, jax.random.key(0))[0])

    def init(self, seed: int) -> State:
        """Seed ``seed``'s initial state, replicated over the mesh."""
        return parallel.replicate(self._init(jax.random.key(seed))[0], self.mesh)

    def train_step(self, state: State, batch: Batch) -> tuple[State, jax.Array]:
        """One jitted step on a host batch (the global batch, or this process's rows of it;
        sharded over the mesh here)."""
        return self._train_step(state, parallel.shard_batch(batch, self.mesh,
                                                           self.cfg.batch_size))

    def eval_step(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        return self._eval_step(state, parallel.shard_batch(batch, self.mesh,
                                                           self.cfg.batch_size))

    def vmapped_steps(self) -> tuple[Callable, Callable]:
        """The jitted steps over states stacked along a leading seed axis: ``train(states,
        batches)`` with batches stacked too, ``evaluate(states, batch)`` with one batch for
        every seed. One device (``group`` refuses a larger mesh)."""
        if self._vmapped is None:
            self._vmapped = (jax.jit(jax.vmap(self.train_step_fn), donate_argnums=0),
                             jax.jit(jax.vmap(self.eval_step_fn, in_axes=(0, None))))
        return self._vmapped

    def scan_steps(self, vmapped: bool = False) -> Callable:
        """The jitted ``(state, images, labels, order) -> (state, losses)``: one train step per
        row of ``order`` (``(K, B)`` int32 indices into ``images``, uint8 ``(N, 28, 28, 1)``,
        and ``labels``, ``(N,)``, the training set kept on the device), all in one
        ``lax.scan``: one dispatch for K steps. ``vmapped``: over stacked states and orders
        (``(S, ...)``, ``(S, K, B)``), the data shared. Donates the state."""
        if vmapped not in self._scans:
            def run(state, images, labels, order):
                def step(state, rows):
                    batch = {"image": images[rows], "label": labels[rows],
                             "mask": jnp.ones(rows.shape, bool)}
                    return self.train_step_fn(state, batch)
                return jax.lax.scan(step, state, order)
            self._scans[vmapped] = jax.jit(jax.vmap(run, in_axes=(0, None, None, 0))
                                           if vmapped else run, donate_argnums=0)
        return self._scans[vmapped]

    def group(self, states: list[State], mode: str) -> SeedGroup:
        """``states`` (one per seed) to train in lock step; see ``SeedGroup``."""
        return SeedGroup(self, states, mode)

    def _model(self, state: State, train: bool, constants: nnx.State | None = None
               ) -> nnx.Module:
        model = nnx.merge(self.graphdef, state["params"], state["batch_stats"],
                          self.constants if constants is None else constants,
                          copy=True)   # fresh Variables at the current trace level
        model.train() if train else model.eval()
        return model

    def train_step_fn(self, state: State, batch: Batch, constants: nnx.State | None = None
                      ) -> tuple[State, jax.Array]:
        key = jax.random.wrap_key_data(state["key"])
        key_augment, key_dropout = jax.random.split(jax.random.fold_in(key, state["step"]))
        images = batch["image"]
        if self.cfg.augment:
            images = random_crop_flip(images, key_augment)
        images = data.preprocess(images, self.cfg.image_size)

        model = self._model(state, train=True, constants=constants)

        def loss_fn(model):
            logits = model(images, rngs=nnx.Rngs(dropout=key_dropout)).astype(jnp.float32)
            return cross_entropy(logits, batch["label"], self.cfg.label_smoothing).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)     # BatchNorm updates land in model
        batch_stats = nnx.state(model, nnx.BatchStat)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                "step": state["step"] + 1, "key": state["key"]}, loss

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
        return _evaluations(lambda batch: self.eval_step(state, batch), images, labels,
                            self.cfg.batch_size)[0]


def _evaluations(eval_step: Callable[[Batch], dict], images: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> list[Evaluation]:
    """One ``Evaluation`` per seed from ``eval_step(batch)``'s sums, scalars (one seed) or
    ``(S,)`` arrays (S seeds), added up over every batch of the split."""
    totals = None
    for batch in data.batches(images, labels, batch_size, train=False,
                              rows=parallel.process_slice(batch_size)):
        sums = eval_step(batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: np.atleast_1d(parallel.to_host(v)) for k, v in totals.items()}
    if not (totals["count"] == len(images)).all():
        raise AssertionError(f"evaluated {totals['count']} examples, expected {len(images)}")
    n = len(images)
    return [Evaluation(float(loss) / n, int(correct) / n, float(smoothed) / n)
            for loss, correct, smoothed in zip(totals["loss_sum"], totals["correct"],
                                               totals["smoothed_loss_sum"], strict=True)]


SEED_MODES = ("vmap", "interleave", "sequential")


def default_seed_mode(backend: str | None = None) -> str:
    """How several seeds train by default on ``backend`` (default: JAX's): ``vmap`` on GPUs
    and TPUs; on the CPU the mode ``jaxcnn bench --seeds`` measured fastest
    (experiments/RESULTS.md)."""
    return CPU_SEED_MODE if (backend or jax.default_backend()) == "cpu" else "vmap"


CPU_SEED_MODE = "interleave"


class SeedGroup:
    """Several seeds' train states stepped together, one batch per seed at each step.

    ``mode`` ``vmap``: the states stacked along a leading seed axis, one vmapped jitted step
    for all seeds (one dispatch per step; BatchNorm statistics stay per seed); ``interleave``:
    a list of states, each seed's jitted step in turn. (``sequential``, one seed after
    another, is the fit loop's: groups of one.) ``vmap`` with more than one seed needs a mesh
    of one device.
    """

    def __init__(self, trainer: Trainer, states: list[State], mode: str):
        if mode not in ("vmap", "interleave"):
            raise ValueError(f"a seed group steps by 'vmap' or 'interleave', got {mode!r}")
        if mode == "vmap" and len(states) > 1 and trainer.mesh.size > 1:
            raise ValueError(f"vmapped seeds train on one device; the mesh has "
                             f"{trainer.mesh.size}")
        self.trainer, self.mode, self.size = trainer, mode, len(states)
        self._states: Any = (jax.tree.map(lambda *xs: jnp.stack(xs), *states)
                             if mode == "vmap" else list(states))

    def step(self, batches: list[Batch]) -> jax.Array | list[jax.Array]:
        """One train step of every seed on its batch; the losses (read them with
        ``losses``: one per seed and step)."""
        if self.mode == "vmap":
            train, _ = self.trainer.vmapped_steps()
            stacked = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
            self._states, losses = train(self._states, stacked)
            return losses
        losses = []
        for i, batch in enumerate(batches):
            self._states[i], loss = self.trainer.train_step(self._states[i], batch)
            losses.append(loss)
        return losses

    def scan(self, images: jax.Array, labels: jax.Array,
             orders: list[np.ndarray]) -> jax.Array | list[jax.Array]:
        """``len(orders[i])`` train steps of every seed in one dispatch (``Trainer.scan_steps``),
        seed i's batches gathered on the device by ``orders[i]`` (``(K, B)`` indices into
        ``images`` and ``labels``); the losses (read them with ``losses``)."""
        if self.mode == "vmap":
            run = self.trainer.scan_steps(vmapped=True)
            self._states, losses = run(self._states, images, labels,
                                       np.stack(orders).astype(np.int32))
            return losses
        run, losses = self.trainer.scan_steps(), []
        for i, order in enumerate(orders):
            self._states[i], loss = run(self._states[i], images, labels, order.astype(np.int32))
            losses.append(loss)
        return losses

    @staticmethod
    def losses(step_losses: jax.Array | list[jax.Array]) -> np.ndarray:
        """A ``step``'s or ``scan``'s losses on the host: ``(seeds, steps)``."""
        if isinstance(step_losses, list):
            return np.stack([np.atleast_1d(np.asarray(parallel.to_host(v), np.float64))
                             for v in step_losses])
        values = np.asarray(parallel.to_host(step_losses), np.float64)
        return values.reshape(values.shape[0], -1)

    def states(self) -> list[State]:
        """Each seed's state (views of the stacked one for ``vmap``)."""
        if self.mode == "vmap":
            return [jax.tree.map(lambda x, i=i: x[i], self._states) for i in range(self.size)]
        return list(self._states)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> list[Evaluation]:
        """Each seed's ``Evaluation`` on the split."""
        if self.mode == "interleave":
            return [self.trainer.evaluate(state, images, labels) for state in self._states]
        _, evaluate = self.trainer.vmapped_steps()
        return _evaluations(lambda batch: evaluate(self._states, batch), images, labels,
                            self.trainer.cfg.batch_size)


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


def check_memory(trainer: Trainer, batch_size: int) -> None:
    """``OutOfMemoryError`` when the largest array of the initialisation or the train step
    alone exceeds the memory of the device it runs on: a lower bound on what the run needs,
    found from shapes, before any parameter exists (a bigger run that still fails is caught
    where it fails)."""
    batch = {"image": jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.uint8),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}

    def init_and_step(key, batch):
        state, constants = trainer._init(key)
        return trainer.train_step_fn(state, batch, constants)

    jaxpr = jax.make_jaxpr(init_and_step)(jax.random.key(0), batch)   # shapes only
    needed = summary.largest_array_bytes(jaxpr.jaxpr) / trainer.mesh.size
    available = _device_memory(trainer.mesh.local_devices[0])
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


@dataclasses.dataclass
class Run:
    """One seed's run in its own workdir: its config (with its seed), checkpoints, state, and
    the meta of its position with its metric history (``meta["history"]``)."""

    cfg: Config
    workdir: Path
    checkpoints: Checkpoints
    state: State | None
    meta: dict
    name: str = ""            # "seed N" in a group of seeds, for messages

    @property
    def position(self) -> tuple[int, int]:
        return self.meta["epoch"], self.meta["step_in_epoch"]

    @property
    def history(self) -> list[dict]:
        return self.meta["history"]


class SeedRuns(NamedTuple):
    """What ``fit_seeds`` returns: each seed's metric history and, per epoch, the statistics
    over the seeds (``summary.json``)."""

    histories: dict[int, list[dict]]
    summary: list[dict]


class DeviceData(NamedTuple):
    """The training split kept on the device for ``steps_per_dispatch`` > 1: uint8 images
    ``(N, 28, 28, 1)``, int32 labels ``(N,)`` (47 MB for Fashion-MNIST's 60,000)."""

    images: jax.Array
    labels: jax.Array
    steps_per_dispatch: int


def _chunks(group: SeedGroup, runs: list[Run], epoch: int, first: int, steps_per_epoch: int,
            train_images: np.ndarray, train_labels: np.ndarray, on_device: DeviceData | None):
    """``(done, losses)`` after each dispatch of the rest of ``epoch``: one step on host
    batches, or up to ``steps_per_dispatch`` steps gathered on the device, a dispatch never
    crossing a checkpoint step (so checkpoints fall where one step a dispatch puts them)."""
    cfg = group.trainer.cfg
    if on_device is None:
        rows = parallel.process_slice(cfg.batch_size)     # this process's rows of each batch
        order = zip(*(data.batches(train_images, train_labels, cfg.batch_size,
                                   seed=run.cfg.seed, epoch=epoch, train=True, rows=rows)
                      for run in runs), strict=True)
        for done, batches in enumerate(itertools.islice(order, first, None), start=first + 1):
            yield done, group.step(list(batches))
        return
    orders = [data.epoch_order(len(train_images), cfg.batch_size, seed=run.cfg.seed,
                               epoch=epoch) for run in runs]
    done, every = first, cfg.checkpoint_every
    while done < steps_per_epoch:
        end = min(steps_per_epoch, done + on_device.steps_per_dispatch)
        if every:
            step = epoch * steps_per_epoch + done
            end = min(end, (step // every + 1) * every - epoch * steps_per_epoch)
        yield end, group.scan(on_device.images, on_device.labels,
                              [order[done:end] for order in orders])
        done = end


def _train_epoch(trainer: Trainer, group: SeedGroup, runs: list[Run], epoch: int,
                 steps_per_epoch: int, train_images: np.ndarray, train_labels: np.ndarray,
                 bar: tqdm, on_device: DeviceData | None = None) -> np.ndarray:
    """The rest of ``epoch`` for the runs of ``group`` (all at one position), each on its own
    shuffle of the training images (from the host, or gathered on the device). Reads the
    losses back every ``SYNC_EVERY`` steps (``DivergenceError`` naming the seed of a bad one),
    updates ``bar``, and saves each run's checkpoint at the mid-epoch checkpoint steps.
    Returns each run's loss sum over the epoch.
    """
    cfg, first = trainer.cfg, runs[0].meta["step_in_epoch"]
    loss_sums = np.array([run.meta["loss_sum"] for run in runs], np.float64)
    start, pending, synced = time.perf_counter(), [], first
    for done, step_losses in _chunks(group, runs, epoch, first, steps_per_epoch, train_images,
                                     train_labels, on_device):
        pending.append(step_losses)
        step = epoch * steps_per_epoch + done
        save_now = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                    and done < steps_per_epoch)
        if done - synced >= SYNC_EVERY or done == steps_per_epoch or save_now:
            losses = np.concatenate([group.losses(v) for v in pending], axis=1).T
            bad = ~(np.isfinite(losses) & (losses <= cfg.max_loss))      # (steps, seeds)
            if bad.any():
                row, column = np.argwhere(bad)[0]
                raise DivergenceError(_divergence_message(
                    float(losses[row, column]), step - len(losses) + int(row) + 1,
                    runs[int(column)]))
            loss_sums += losses.sum(axis=0)
            rate = (done - first) * cfg.batch_size * len(runs) / (time.perf_counter() - start)
            bar.update(len(losses))
            bar.set_postfix(loss=f"{losses[-1].mean():.4f}", img_s=f"{rate:,.0f}")
            pending, synced = [], done
        if save_now:
            for run, state, loss_sum in zip(runs, group.states(), loss_sums, strict=True):
                run.checkpoints.save(step, state, {**run.meta, "epoch": epoch,
                                                   "step_in_epoch": done,
                                                   "loss_sum": float(loss_sum)})
    return loss_sums


def new_meta(cfg: Config) -> dict:
    """The checkpoint meta of a run that has not trained yet: position 0, no history or best,
    a new run id, the config."""
    return {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "history": [],
            "best_val_acc": None, "best_step": None, "run_id": uuid.uuid4().hex,
            "config": cfg.to_dict()}


def _resume(trainer: Trainer, cfg: Config, checkpoints: Checkpoints, workdir: Path,
            log: Callable[[str], None]) -> tuple[State, dict]:
    """The run's state and meta from ``latest`` (a new run's when there is none), with
    ``best`` checked to belong to it and to be readable (re-saved from ``latest`` or dropped
    otherwise). ``ValueError`` when the checkpoint was trained with another config."""
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
    restored = checkpoints.restore(trainer.abstract_state)
    if restored is None:
        if checkpoints.steps("best"):
            checkpoints.drop("best", "there is no latest checkpoint, so the best one belongs to "
                                     "an earlier run of this workdir")
        if (workdir / "metrics.jsonl").exists() and report.read_metrics(workdir):
            log(f"{workdir / 'checkpoints' / 'latest'} holds no checkpoint: starting the run "
                f"over (its metrics.jsonl is rewritten)")
        state = trainer.initial_state if cfg.seed == trainer.cfg.seed else trainer.init(cfg.seed)
        return state, new_meta(cfg)
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
            checkpoints.restore(trainer.abstract_state, which="best")
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


def _title(cfg: Config, history: list[dict]) -> str:
    lrs = list(dict.fromkeys(row.get("lr", cfg.lr) for row in history)) or [cfg.lr]
    return f"{cfg.model}, {cfg.recipe} recipe, lr {', '.join(f'{lr:g}' for lr in lrs)}"


def parse_seeds(text: str) -> list[int]:
    """``"0-19"``, ``"0,3,7"`` or ``"0-4,9"`` as a list of distinct seeds, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            span = range(int(low), int(high) + 1) if dash else [int(low)]
        except ValueError:
            span = []
        if not span:
            raise ValueError(f"{setting('seeds')} takes seeds such as 0-19, 0,3,7 or 0-4,9; "
                             f"got {text!r}")
        seeds += [s for s in span if s not in seeds]
    return seeds


EpochHook = Callable[[Path, list[dict]], None]     # (a run's workdir, its history so far)


def fit(cfg: Config, workdir: str | Path, *, force_new: bool = False,
        progress: bool | None = None, log: Callable[[str], None] = print,
        on_epoch: EpochHook | None = None, steps_per_dispatch: int = 1) -> list[dict]:
    """Train ``cfg`` on Fashion-MNIST, validating after each epoch on ``cfg.val_examples``
    held-out training images (and reporting the test set), or on all test images when there
    is no held-out split (the book's practice); the best checkpoint is chosen on validation.

    Leaves ``WORKDIR/metrics.jsonl``, ``curves.png``, ``config.json`` and Orbax checkpoints in
    ``WORKDIR/checkpoints/{latest,best}``; resumes from the latest checkpoint when the workdir
    holds one of the same config. One run at a time: a workdir in use by a live run raises
    ``workdir.WorkdirBusyError``. ``progress`` (default: stderr is a terminal) shows a bar.
    In a multi-process run every process calls ``fit``; only process 0 logs, writes files and
    holds the lock (Orbax coordinates the checkpoints). ``on_epoch(workdir, history)`` runs
    there after each epoch's files are written (e.g. ``tensorboard.log_tensorboard``).
    ``steps_per_dispatch`` > 1 keeps the training images on the device and runs that many
    steps in one dispatch (``Trainer.scan_steps``): for GPUs, where a step's dispatch costs
    more than a small model's work (on XLA's CPU backend the scan measured slower); results
    and checkpoints are those of one step a dispatch. Returns the metric history, one dict per
    epoch.
    """
    runs = _train(cfg, Path(workdir), None, force_new=force_new, progress=progress, log=log,
                  mode="interleave", on_epoch=on_epoch, steps_per_dispatch=steps_per_dispatch)
    return runs[0].history


def fit_seeds(cfg: Config, workdir: str | Path, seeds: list[int], *, force_new: bool = False,
              progress: bool | None = None, log: Callable[[str], None] = print,
              mode: str | None = None, on_epoch: EpochHook | None = None,
              steps_per_dispatch: int = 1) -> SeedRuns:
    """Train ``cfg`` once per seed of ``seeds``, each run exactly as ``fit`` with that seed
    would train it (initialisation, data order, dropout and augmentation keys), in
    ``WORKDIR/seed-N/``: a normal workdir each, for ``jaxcnn eval``, ``load_model`` and
    resume. ``WORKDIR/summary.json`` holds per epoch the mean, sd, min, median and max over the
    seeds of the losses and accuracies, ``WORKDIR/curves.png`` the mean curves with a min-max
    band. ``mode`` (``SEED_MODES``; default ``default_seed_mode()``): ``vmap`` trains the seeds
    in one vmapped step, ``interleave`` steps them in turn, ``sequential`` trains one seed after
    another. Several seeds train on one device (``cfg.devices`` 1 or None). Killed and run
    again, every seed resumes where it stopped. ``steps_per_dispatch`` as in ``fit``."""
    mode = default_seed_mode() if mode is None else mode
    if mode not in SEED_MODES:
        raise ValueError(f"mode must be one of {', '.join(SEED_MODES)}; got {mode!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{setting('seeds')} must list distinct seeds; got {seeds!r}")
    for seed in seeds:                                 # Config's rule, before any work
        dataclasses.replace(cfg, seed=seed)
    if cfg.devices not in (None, 1):
        raise ValueError(f"several seeds train on one device; {setting('devices')} "
                         f"{cfg.devices} with {setting('seeds')} is not supported")
    runs = _train(cfg, Path(workdir), list(seeds), force_new=force_new, progress=progress,
                  log=log, mode=mode, on_epoch=on_epoch, steps_per_dispatch=steps_per_dispatch)
    return SeedRuns({run.cfg.seed: run.history for run in runs},
                    report.seed_summary([run.history for run in runs]))


SEEDS_FILE = "seeds.json"     # a multi-seed workdir's seeds and base config


@dataclasses.dataclass
class _Loop:
    """What every group of a ``_train`` call shares: the steps, the data, where the seeds'
    summary goes (``group_dir``; None for one run), how to report, the device-resident data."""

    trainer: Trainer
    parts: Splits
    steps_per_epoch: int
    group_dir: Path | None
    log: Callable[[str], None]
    progress: bool
    on_epoch: EpochHook | None
    on_device: DeviceData | None


def _train(cfg: Config, workdir: Path, seeds: list[int] | None, *, force_new: bool,
           progress: bool | None, log: Callable[[str], None], mode: str,
           on_epoch: EpochHook | None, steps_per_dispatch: int) -> list[Run]:
    """The one training loop, for ``fit`` (``seeds`` None: one run in ``workdir``) and
    ``fit_seeds`` (a run per seed in ``workdir/seed-N``)."""
    main = jax.process_index() == 0
    log = log if main else (lambda message: None)
    if isinstance(steps_per_dispatch, bool) or not isinstance(steps_per_dispatch, int) \
            or steps_per_dispatch < 1:
        raise ValueError(f"{setting('steps_per_dispatch')} must be a positive integer, got "
                         f"{steps_per_dispatch!r}")
    # The data, the model and the memory check first: their errors come before any writing.
    parts = splits(cfg)
    steps_per_epoch = data.num_batches(len(parts.train[0]), cfg.batch_size, train=True)
    trainer = Trainer(cfg, steps_per_epoch, None if seeds is None else parallel.make_mesh(1))
    check_memory(trainer, cfg.batch_size * (len(seeds) if seeds and mode == "vmap" else 1))
    configs = ([(cfg, workdir)] if seeds is None else
               [(dataclasses.replace(cfg, seed=s), workdir / f"seed-{s}") for s in seeds])
    folders = ([] if seeds is None else [workdir]) + [folder for _, folder in configs]
    for folder in folders:
        workdir_rules.create(folder)
    with contextlib.ExitStack() as stack:
        if main:
            for folder in folders:
                stack.enter_context(workdir_rules.WorkdirLock(folder))
                if force_new:
                    workdir_rules.start_over(folder)
                workdir_rules.remove_partial_writes(folder)
            if seeds is not None:
                report.write_json(workdir / SEEDS_FILE, {"seeds": seeds,
                                                         "config": cfg.to_dict()})
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxcnn: workdir prepared")
        runs = []
        for run_cfg, folder in configs:
            checkpoints = stack.enter_context(contextlib.closing(
                Checkpoints(folder / "checkpoints")))
            runs.append(Run(run_cfg, folder, checkpoints,
                            *_resume(trainer, run_cfg, checkpoints, folder, log),
                            name="" if seeds is None else f"seed {run_cfg.seed}"))
        on_device = None
        if steps_per_dispatch > 1:
            replicated = parallel.replicated(trainer.mesh)
            on_device = DeviceData(jax.device_put(parts.train[0], replicated),
                                   jax.device_put(parts.train[1], replicated),
                                   steps_per_dispatch)
        loop = _Loop(trainer, parts, steps_per_epoch, None if seeds is None else workdir, log,
                     main and (sys.stderr.isatty() if progress is None else progress), on_epoch,
                     on_device)
        try:
            _train_runs(loop, runs, mode)
        except jax.errors.JaxRuntimeError as error:
            if _is_out_of_memory(error):
                raise OutOfMemoryError(_memory_message(
                    cfg, f"more memory than there is ({str(error).splitlines()[0][:200]})",
                    _device_memory(trainer.mesh.local_devices[0]))) from error
            raise
    return runs


def _train_runs(loop: _Loop, runs: list[Run], mode: str) -> None:
    """Train every unfinished run to ``cfg.epochs``: in groups of the runs that stand at the
    same position (one run a group with ``mode`` sequential)."""
    cfg, main, spe = loop.trainer.cfg, jax.process_index() == 0, loop.steps_per_epoch
    for run in runs:
        if run.meta["epoch"] >= cfg.epochs:
            extend = (f"a larger {setting('epochs')} extends it, " if cfg.schedule == "constant"
                      else "")
            loop.log(f"{run.workdir} holds this run, finished at epoch {run.meta['epoch']}: "
                     f"nothing to train ({extend}{switch('force_new')} starts over)")
        elif run.meta["history"] or run.meta["step_in_epoch"]:
            loop.log(f"resuming {run.workdir} at epoch {run.meta['epoch'] + 1}, step "
                     f"{run.meta['epoch'] * spe + run.meta['step_in_epoch']}")
    pending = [run for run in runs if run.meta["epoch"] < cfg.epochs]
    groups = ([[run] for run in pending] if mode == "sequential" else
              [[run for run in pending if run.position == position]
               for position in sorted({run.position for run in pending})])
    for members in groups:
        if main:
            for run in members:
                report.write_json(run.workdir / "config.json", run.cfg.to_dict())
                report.write_metrics(run.workdir, run.history)
        group = loop.trainer.group([run.state for run in members],
                                   "vmap" if mode == "vmap" and len(members) > 1
                                   else "interleave")
        for run in members:
            run.state = None               # the group holds (and its steps donate) the states
        _train_group(loop, group, members, runs)


def _train_group(loop: _Loop, group: SeedGroup, members: list[Run], runs: list[Run]) -> None:
    """``members`` (one position) trained to the last epoch in ``group``; each epoch ends with
    evaluation, metrics, curves and checkpoints per run (and the seeds' summary)."""
    trainer, steps_per_epoch, group_dir = loop.trainer, loop.steps_per_epoch, loop.group_dir
    cfg, main = trainer.cfg, jax.process_index() == 0
    (train_images, train_labels), val, test = loop.parts
    for epoch in range(members[0].meta["epoch"], cfg.epochs):
        first = members[0].meta["step_in_epoch"]
        start = time.perf_counter()
        with _progress(steps_per_epoch, first, f"epoch {epoch + 1}/{cfg.epochs}",
                       loop.progress) as bar:
            loss_sums = _train_epoch(trainer, group, members, epoch, steps_per_epoch,
                                     train_images, train_labels, bar, loop.on_device)
        rate = (steps_per_epoch - first) * cfg.batch_size / (time.perf_counter() - start)
        validations = group.evaluate(*(val or test))
        tests = group.evaluate(*test) if val is not None else [None] * len(members)
        step = (epoch + 1) * steps_per_epoch
        for run, state, loss_sum, validation, tested in zip(
                members, group.states(), loss_sums, validations, tests, strict=True):
            row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps_per_epoch,
                   "val_loss": validation.loss, "val_acc": validation.acc}
            if cfg.label_smoothing:
                row["val_loss_smoothed"] = validation.smoothed_loss
            if tested is not None:
                row.update(test_loss=tested.loss, test_acc=tested.acc)
            row.update(images_per_s=rate, seconds=time.perf_counter() - start,
                       **{name: getattr(cfg, name) for name in ROW_CONFIG},
                       devices=trainer.mesh.size)
            history = [*run.history, row]
            best = run.meta["best_val_acc"] is None or validation.acc > run.meta["best_val_acc"]
            run.meta = {**run.meta, "epoch": epoch + 1, "step_in_epoch": 0, "loss_sum": 0.0,
                        "history": history}
            if best:
                run.meta.update(best_val_acc=validation.acc, best_step=step)
            run.checkpoints.save(step, state, run.meta, best=best)
            if main:
                report.write_metrics(run.workdir, history)
                report.plot_curves(run.workdir / "curves.png", history, _title(run.cfg, history))
                if loop.on_epoch is not None:
                    loop.on_epoch(run.workdir, history)
            if group_dir is None:
                tested_text = f"  test_acc {row['test_acc']:.4f}" if tested else ""
                loop.log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
                         f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}"
                         f"{tested_text}  {rate:,.0f} img/s  {row['seconds']:.1f} s")
        if group_dir is not None:
            summary = report.seed_summary([run.history for run in runs])
            if main:
                report.write_json(group_dir / "summary.json", summary)
                report.plot_seed_curves(group_dir / "curves.png", summary,
                                        _title(cfg, members[0].history) + ", seeds")
            accs = [run.history[-1]["val_acc"] for run in members]
            loop.log(f"epoch {epoch + 1}/{cfg.epochs}  seeds {_seed_list(members)}: val_acc "
                     f"median {statistics.median(accs):.4f} (min {min(accs):.4f}, max "
                     f"{max(accs):.4f})  {rate * len(members):,.0f} img/s  "
                     f"{time.perf_counter() - start:.1f} s")
    for run, state in zip(members, group.states(), strict=True):
        run.state = state


def _seed_list(runs: list[Run]) -> str:
    seeds = [run.cfg.seed for run in runs]
    consecutive = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive else ",".join(map(str, seeds))


def _divergence_message(value: float, step: int, run: Run) -> str:
    steps = run.checkpoints.steps("latest")
    where = (f"the last good checkpoint is step {steps[-1]} in "
             f"{run.checkpoints.directory / 'latest'}" if steps
             else "no checkpoint was saved before it")
    prefix = f"{run.name}: " if run.name else ""
    return (f"{prefix}training diverged: the loss became {value:.4g} at step {step} "
            f"(non-finite or above max_loss {run.cfg.max_loss:g}); {where}. Run it again with a "
            f"lower {setting('lr')} (now {run.cfg.lr:g}): it resumes from there "
            f"({switch('force_new')} starts over)")


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
            restored = checkpoints.restore(trainer.abstract_state, which=which)
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
