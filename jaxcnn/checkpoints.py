"""Orbax checkpoints of a run: ``latest`` (the last two saves, for resume) and ``best``.

Each checkpoint holds the train state pytree (``StandardSave``: no pickle) and a JSON
``meta`` (epoch, step within the epoch, the metric history). Orbax writes into a temporary
directory and renames it when complete, so a kill mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No usable checkpoint could be read."""


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpoints:
    """``WORKDIR/checkpoints/{latest,best}``; steps are global train steps."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.latest = _manager(self.directory / "latest", keep=2)
        self.best = _manager(self.directory / "best", keep=1)

    def save(self, step: int, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` and ``meta`` as the latest checkpoint (and as the best one)."""
        managers = (self.latest, self.best) if best else (self.latest,)
        for manager in managers:
            if manager.latest_step() == step:
                continue                        # already saved at this step (e.g. mid-epoch)
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
            except Exception as error:          # orbax raises many types for a damaged save
                failures.append(f"step {step}: {type(error).__name__}: {error}")
                log.warning("checkpoint %s/%s is unreadable (%s); trying an older one",
                            which, step, error)
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
