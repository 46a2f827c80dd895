"""Orbax checkpoints of a run: ``latest`` (the last two saves, for resume) and ``best``.

Each checkpoint holds the train state pytree (``StandardSave``: no pickle) and a JSON ``meta``:
the position (epoch, step within the epoch), the metric history, the config that trained it,
the run's id and the SHA-256 of the state's bytes. Orbax writes into a temporary directory and
renames it when complete, so a kill mid-save leaves the previous checkpoint.

What can be found on disk, and what is done with it:
- a step folder without Orbax's ``_CHECKPOINT_METADATA`` (not a checkpoint): ignored, and in a
  writable ``Checkpoints`` moved to ``checkpoints/ignored/`` and reported once, so that it can
  never count among the kept checkpoints and evict a real one;
- a damaged checkpoint (a file missing, truncated or changed; a digest that does not match):
  reported with the file that is broken, and the one before it is used; a writable
  ``Checkpoints`` moves the damaged ones aside, so that the run's next save replaces them;
- a checkpoint whose tree differs from what the code builds for its config (another model, or
  another version of jaxcnn): ``CheckpointMismatchError``, never silently skipped.
A save at a step that already holds a checkpoint replaces it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxcnn import parallel
from jaxcnn.names import setting, switch

ORBAX_MARKER = "_CHECKPOINT_METADATA"   # written by Orbax into every finished checkpoint
IGNORED = "ignored"                     # checkpoints/ignored/: what was moved aside


class CheckpointError(ValueError):
    """No usable checkpoint could be read."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's state tree differs from the one the code builds for the config."""


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "meta": ocp.JsonCheckpointHandler()})


def digest(tree: Any) -> str:
    """SHA-256 over the bytes of every array in ``tree`` (in its flattening order; for a
    replicated array, of this process's copy)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        value = parallel.to_host(leaf) if isinstance(leaf, jax.Array) else leaf
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _leaves(tree: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """(path 'a/b/0/c', shape, dtype) of every leaf of ``tree``, sorted by path."""
    def name(key) -> str:
        return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
    return sorted(("/".join(name(k) for k in path), tuple(leaf.shape), str(leaf.dtype))
                  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])


def _tree_difference(saved: Any, expected: Any) -> str | None:
    """The first difference between two trees of arrays (or their metadata), or None."""
    mine, theirs = dict((p, (s, d)) for p, s, d in _leaves(expected)), \
        dict((p, (s, d)) for p, s, d in _leaves(saved))
    for path in sorted(set(mine) | set(theirs)):
        if path not in theirs:
            return f"it lacks {path}"
        if path not in mine:
            return f"it holds {path}, which the model does not have"
        if mine[path] != theirs[path]:
            (s, d), (s2, d2) = theirs[path], mine[path]
            return f"{path} is {d}{list(s)} there, {d2}{list(s2)} in the model"
    return None


def _problem(error: Exception) -> str:
    """What is wrong with a damaged checkpoint, naming the array and the file Orbax's reader
    (TensorStore) names."""
    text = str(error)
    files = re.findall(r'local file "([^"]+)"', text)
    if files:
        array = re.search(r'Error reading "([^"/]+)', text)
        detail = text.split(f'local file "{files[-1]}"', 1)[1].lstrip(": ").splitlines()[0]
        what = f"{array.group(1)} in {files[-1]}" if array else files[-1]
        return f"{what} is damaged ({detail.split(' [tensorstore_spec')[0][:200]})"
    if isinstance(error, KeyError):
        return f"part of it is missing ({text.strip(chr(39))[:200]})"
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _quiet_orphaned_reads() -> None:
    """After a failed restore, Orbax's reader leaves reads of the damaged checkpoint in flight;
    at exit each reports ``RuntimeError: Event loop is closed`` as a raw traceback. Drop just
    those (every other unraisable error still reaches the previous hook)."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    if getattr(previous, "__name__", "") != "jaxcnn_quiet_orphaned_reads":
        hook.__name__ = "jaxcnn_quiet_orphaned_reads"
        sys.unraisablehook = hook


def _on_main(action: Callable[[], None]) -> None:
    """``action()`` on process 0 only; every process waits until it is done."""
    if jax.process_index() == 0:
        action()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxcnn: checkpoints moved")


class Checkpoints:
    """``WORKDIR/checkpoints/{latest,best}``; steps are global train steps. ``warn`` receives
    the report of each checkpoint skipped or moved. ``writable=False`` (eval, reports) reads
    without moving anything."""

    def __init__(self, directory: str | Path, warn: Callable[[str], None] = _warn, *,
                 writable: bool = True):
        self.directory = Path(directory)
        self.warn = warn
        self.writable = writable
        if writable:
            _on_main(self._move_aside_non_checkpoints)
        self.latest = _manager(self.directory / "latest", keep=2)
        self.best = _manager(self.directory / "best", keep=1)

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        return self.latest if which == "latest" else self.best

    def _move_aside_non_checkpoints(self) -> None:
        for which in ("latest", "best"):
            folder = self.directory / which
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.name.isdigit() and path.is_dir() and not (path / ORBAX_MARKER).exists():
                    where = self._move_aside(which, int(path.name))
                    self.warn(f"{path} is not an Orbax checkpoint (no {ORBAX_MARKER}); moved "
                              f"to {where} so that it cannot displace the run's checkpoints")

    def _move_aside(self, which: str, step: int) -> Path:
        """Move ``which/step`` to ``ignored/which-step[-k]``; returns where it went."""
        target = self.directory / IGNORED / f"{which}-{step}"
        k = 1
        while target.exists():
            target, k = self.directory / IGNORED / f"{which}-{step}-{k}", k + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / which / str(step)), str(target))
        return target

    def steps(self, which: str = "latest") -> list[int]:
        """The steps of ``which`` that are Orbax checkpoints, oldest first."""
        folder = self.directory / which
        return sorted(s for s in self._manager(which).all_steps()
                      if (folder / str(s) / ORBAX_MARKER).exists())

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` and ``meta`` as the latest checkpoint (the best one first, if so),
        replacing a checkpoint at the same step."""
        meta = {**meta, "digest": digest(state)}
        for manager in (self.best, self.latest) if best else (self.latest,):
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()

    def read_meta(self, which: str = "latest") -> tuple[int, dict] | None:
        """``(step, meta)`` of the newest checkpoint of ``which`` whose meta reads, without
        its arrays; None if there is none."""
        manager = self._manager(which)
        for step in reversed(self.steps(which)):
            try:
                return step, manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore())).meta
            except (OSError, ValueError, KeyError):
                continue
        return None

    def restore(self, abstract_state: Any, *, which: str = "latest") -> tuple[Any, dict] | None:
        """The newest readable checkpoint of ``which`` as ``(state, meta)``, ``None`` if there
        is none. A damaged checkpoint is reported and the one before it tried; a writable
        ``Checkpoints`` moves the damaged ones aside. ``CheckpointMismatchError`` when a
        checkpoint's tree is not ``abstract_state``'s; ``CheckpointError`` when none reads."""
        manager = self._manager(which)
        failures: list[tuple[int, str]] = []
        result = None
        for step in reversed(self.steps(which)):
            problem = "its state holds no arrays"
            try:
                saved = manager.item_metadata(step)["state"]
                saved_tree = getattr(saved, "tree", saved)
            except (OSError, ValueError, KeyError, TypeError) as error:
                saved_tree, problem = None, _problem(error)
            if saved_tree is not None:
                difference = _tree_difference(saved_tree, abstract_state)
                if difference is not None:
                    raise CheckpointMismatchError(
                        f"checkpoint {self.directory / which / str(step)} was written for "
                        f"another model or by another version of jaxcnn: {difference}. Train "
                        f"into another {setting('workdir')}, or start over with "
                        f"{switch('force_new')}")
                try:
                    restored = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore()))
                    if restored.meta.get("digest") != digest(restored.state):
                        raise CheckpointError("its arrays do not match the digest saved with "
                                              "them")
                    result = restored.state, restored.meta
                except (OSError, ValueError, KeyError) as error:  # a damaged save
                    problem = _problem(error)
                    _quiet_orphaned_reads()
            if result is not None:
                break
            failures.append((step, problem))
            self.warn(f"checkpoint {self.directory / which / str(step)} is unreadable: "
                      f"{problem}; trying an older one")
        if failures and self.writable:
            def move():
                for step, _ in failures:
                    where = self._move_aside(which, step)
                    self.warn(f"moved the unreadable checkpoint to {where}")
            _on_main(move)
            manager.reload()
        if result is None and failures:
            raise CheckpointError(f"no readable checkpoint in {self.directory / which}: "
                                  + "; ".join(f"step {s}: {p}" for s, p in failures))
        return result

    def drop(self, which: str, reason: str) -> None:
        """Move every checkpoint of ``which`` aside, reporting ``reason``."""
        manager = self._manager(which)
        steps = manager.all_steps()

        def move():
            for step in steps:
                self.warn(f"{reason}: moved {self.directory / which / str(step)} to "
                          f"{self._move_aside(which, step)}")
        _on_main(move)
        manager.reload()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract(tree: Any) -> Any:
    """``tree`` with every array replaced by its shape and dtype (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
