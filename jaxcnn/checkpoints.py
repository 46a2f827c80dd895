"""Orbax checkpoints of a run: ``latest`` (the last two saves, for resume) and ``best``.

Each checkpoint holds the train state pytree (``StandardSave``: no pickle) and a JSON
``meta`` (epoch, step within the epoch, the metric history, and the SHA-256 of the state's
bytes). Orbax writes into a temporary directory and renames it when complete, so a kill
mid-save leaves the previous checkpoint; a checkpoint that fails to load or whose digest does
not match is reported and the one before it is used.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxcnn import parallel


class CheckpointError(ValueError):
    """No usable checkpoint could be read."""


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


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


class Checkpoints:
    """``WORKDIR/checkpoints/{latest,best}``; steps are global train steps. ``warn`` receives
    the report of each checkpoint skipped on restore."""

    def __init__(self, directory: str | Path, warn: Callable[[str], None] = _warn):
        self.directory = Path(directory)
        self.warn = warn
        self.latest = _manager(self.directory / "latest", keep=2)
        self.best = _manager(self.directory / "best", keep=1)

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` and ``meta`` as the latest checkpoint (the best one first, if so)."""
        meta = {**meta, "digest": digest(state)}
        for manager in (self.best, self.latest) if best else (self.latest,):
            if manager.latest_step() == step:
                continue                        # already saved at this step
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()

    def restore(self, abstract_state: Any, *, which: str = "latest") -> tuple[Any, dict] | None:
        """The newest readable checkpoint of ``which`` as ``(state, meta)``, ``None`` if there is
        none. A checkpoint that fails to load is reported and the one before it is tried."""
        manager = self.latest if which == "latest" else self.best
        steps = sorted(manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                if restored.meta.get("digest") != digest(restored.state):
                    raise CheckpointError("its arrays do not match the digest saved with them")
            except Exception as error:          # orbax raises many types for a damaged save
                problem = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                failures.append(f"step {step}: {problem}")
                self.warn(f"checkpoint {self.directory / which / str(step)} is unreadable "
                          f"({problem}); trying an older one")
                continue
            return restored.state, restored.meta
        if failures:
            raise CheckpointError(f"no readable checkpoint in {self.directory / which}: "
                                  + "; ".join(failures))
        return None

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def abstract(tree: Any) -> Any:
    """``tree`` with every array replaced by its shape and dtype (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
