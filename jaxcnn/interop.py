"""Weights in and out: jaxcnn's models as the book's PyTorch state dicts, and safetensors files.

``to_torch(model)`` gives the ``state_dict`` of the book's PyTorch module of the same network
(``jaxcnn.torch_models``), as NumPy arrays; ``from_torch(name, state_dict, **create_kwargs)``
builds ``models.create(name, **create_kwargs)`` and fills it. Neither needs torch. The mapping:

- conv kernels HWIO ``(kh, kw, in, out)`` <-> ``weight`` OIHW ``(out, in, kh, kw)``;
- dense kernels ``(in, out)`` <-> ``weight`` ``(out, in)``; the first dense layer after a
  flattened conv stack also has its input rows re-ordered, since PyTorch flattens
  ``(C, H, W)`` and jaxcnn ``(H, W, C)``;
- BatchNorm ``scale, bias, mean, var`` <-> ``weight, bias, running_mean, running_var``;
  ``num_batches_tracked`` is ignored on the way in and written as 0 on the way out;
- keys are the PyTorch module paths: ``nn.Sequential`` indices (global average pooling is two
  PyTorch modules, ``AdaptiveAvgPool2d`` and ``Flatten``), attribute names (``conv1``,
  ``b2_1``), and the names the book gives with ``add_module`` (ResNet's ``b2``..``last``,
  DenseNet's ``dense_blk1``, ``tran_blk1``, AnyNet's ``stage1``, ``head``).

``jaxcnn convert WORKDIR --to FILE.safetensors`` writes a run's weights for PyTorch
(``safetensors.torch.load_file``), and ``jaxcnn convert FILE.safetensors --from-torch --model
NAME --workdir DIR`` makes a workdir of PyTorch weights that ``jaxcnn eval``, ``predict``,
``export`` and ``train.load_model`` read (and ``jaxcnn train`` fine-tunes).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import layers, models
from jaxcnn.config import Config

STEM = "0"                                     # PyTorch's name of the first of add_module's
BATCH_NORMS = (nnx.BatchNorm, layers.BatchNorm)   # Flax's, and the book's from-scratch one
WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)       # what a state dict holds


@dataclass(frozen=True)
class Entry:
    """One state-dict key and the jaxcnn variable behind it (None: ``num_batches_tracked``).
    ``kind``: 'conv', 'dense', 'flat_dense' (after a flatten of ``side x side x channels``),
    'vector' (biases, BatchNorm) or 'counter'."""

    key: str
    variable: nnx.Variable | None
    kind: str
    side: int = 1
    channels: int = 0

    def torch_shape(self) -> tuple[int, ...]:
        """The shape PyTorch gives this entry."""
        if self.variable is None:
            return ()
        shape = tuple(self.variable.get_value().shape)
        if self.kind == "conv":
            return shape[3], shape[2], shape[0], shape[1]
        return shape[::-1] if self.kind in ("dense", "flat_dense") else shape

    def to_torch(self) -> np.ndarray:
        """The variable in PyTorch's layout."""
        if self.variable is None:
            return np.zeros((), np.int64)
        value = np.asarray(self.variable.get_value())
        if self.kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif self.kind == "dense":
            value = value.T
        elif self.kind == "flat_dense":           # rows (h, w, c) -> columns (c, h, w)
            value = value.reshape(self.side, self.side, self.channels, -1)
            value = value.transpose(3, 2, 0, 1).reshape(value.shape[-1], -1)
        return np.ascontiguousarray(value)

    def from_torch(self, value: np.ndarray) -> np.ndarray:
        """``value`` (PyTorch's layout, of ``torch_shape()``) in jaxcnn's layout."""
        if self.kind == "conv":
            return value.transpose(2, 3, 1, 0)
        if self.kind == "dense":
            return value.T
        if self.kind == "flat_dense":             # columns (c, h, w) -> rows (h, w, c)
            value = value.reshape(-1, self.channels, self.side, self.side)
            return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
        return value


def _children(module: nnx.Module) -> list[tuple[str, Any]]:
    """``(PyTorch name, child)`` of ``module`` in order."""
    if isinstance(module, (nnx.Sequential, nnx.List)):
        items = list(module.layers if isinstance(module, nnx.Sequential) else module)
        if isinstance(module, models.ResNet):
            names = [STEM, *(f"b{i + 2}" for i in range(len(items) - 2)), "last"]
        elif isinstance(module, models.AnyNet):
            names = [STEM, *(f"stage{i + 1}" for i in range(len(items) - 2)), "head"]
        elif isinstance(module, models.DenseNet):
            names, block = [STEM], 0
            for item in items[1:-1]:
                block += isinstance(item, models.DenseBlock)
                names.append(f"{'dense' if isinstance(item, models.DenseBlock) else 'tran'}"
                             f"_blk{block}")
            names.append("last")
        else:                                 # positions; global_avg_pool is two modules
            names, index = [], 0
            for item in items:
                names.append(str(index))
                index += 2 if item is layers.global_avg_pool else 1
        return list(zip(names, items, strict=True))
    return [("net" if isinstance(module, models.DenseBlock) and name == "blocks" else name, value)
            for name, value in vars(module).items()
            if not name.startswith("_") and isinstance(value, (nnx.Module, nnx.List))]


def _walk(module: Any, prefix: str, out: list[Entry], flat: dict[str, int | None]) -> None:
    """Append ``module``'s entries to ``out``. ``flat`` carries the last conv's channels and,
    after a flatten, the channels its input had (for the dense layer that follows)."""
    if module is layers.flatten:
        flat["flattened"] = flat["channels"]
    elif module is layers.global_avg_pool:
        flat["flattened"] = None
    elif isinstance(module, nnx.Conv):
        out.append(Entry(prefix + "weight", module.kernel, "conv"))
        out += [Entry(prefix + "bias", module.bias, "vector")] if module.bias is not None else []
        flat["channels"] = module.out_features
    elif isinstance(module, nnx.Linear):
        channels, flat["flattened"] = flat["flattened"], None
        side = math.isqrt(module.in_features // channels) if channels else 1
        if side > 1 and side * side * channels == module.in_features:
            out.append(Entry(prefix + "weight", module.kernel, "flat_dense", side, channels))
        else:
            out.append(Entry(prefix + "weight", module.kernel, "dense"))
        out += [Entry(prefix + "bias", module.bias, "vector")] if module.bias is not None else []
    elif isinstance(module, BATCH_NORMS):
        out += [Entry(prefix + key, getattr(module, name), "vector") for name, key in
                (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                 ("var", "running_var"))]
        out.append(Entry(prefix + "num_batches_tracked", None, "counter"))
    elif isinstance(module, (nnx.Module, nnx.List)):
        own = [name for name, value in vars(module).items()
               if isinstance(value, (nnx.Param, nnx.BatchStat))]
        if own:
            raise ValueError(f"interop cannot map {type(module).__name__}'s {', '.join(own)} "
                             f"to PyTorch keys: only conv, dense and BatchNorm layers")
        for name, child in _children(module):
            _walk(child, f"{prefix}{name}.", out, flat)


def entries(model: nnx.Module) -> list[Entry]:
    """Every state-dict entry of ``model`` in PyTorch's order of registration."""
    out: list[Entry] = []
    _walk(model, "", out, {"channels": None, "flattened": None})
    covered = sum(entry.variable is not None for entry in out)
    total = len(jax.tree.leaves(nnx.state(model, WEIGHTS)))
    if covered != total:                           # a layer type this walk does not know
        raise ValueError(f"interop maps {covered} of {type(model).__name__}'s {total} "
                         f"parameters and statistics to PyTorch keys")
    return out


def to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
    """``model``'s weights as the book's PyTorch module's ``state_dict``: key -> NumPy array in
    PyTorch's layout (``torch.from_numpy`` each for ``load_state_dict``)."""
    return {entry.key: entry.to_torch() for entry in entries(model)}


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (on any device, any float dtype) or array-like as a NumPy array."""
    if hasattr(value, "detach"):                   # torch.Tensor, without importing torch
        value = value.detach().cpu()
        value = value.float() if str(value.dtype) == "torch.bfloat16" else value
        value = value.numpy()
    return np.asarray(value)


def load_state_dict(model: nnx.Module, state_dict: dict[str, Any], name: str) -> nnx.Module:
    """Fill ``model`` (the registry's ``name``) with the PyTorch ``state_dict``; returns it.
    ``ValueError`` naming the first key that is missing, has another shape or is not the
    model's, and the model and shape expected."""
    arrays = {key: _numpy(value) for key, value in state_dict.items()}
    expected = entries(model)
    for entry in expected:
        if entry.kind == "counter":
            continue                                # num_batches_tracked: optional, unused
        if entry.key not in arrays:
            raise ValueError(f"the state dict lacks {entry.key!r}, which {name} expects with "
                             f"shape {entry.torch_shape()} ({len(arrays)} keys given, "
                             f"{len(expected)} expected)")
        value = arrays[entry.key]
        if value.shape != entry.torch_shape():
            hint = (" (its input width follows the image size: pass the image_size the "
                    "weights were trained at)" if entry.kind in ("flat_dense", "dense") else "")
            raise ValueError(f"{entry.key!r} has shape {value.shape} in the state dict; {name} "
                             f"expects {entry.torch_shape()}{hint}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{entry.key!r} is {value.dtype} in the state dict; {name} expects "
                             f"floating-point weights")
    known = {entry.key for entry in expected}
    for key in arrays:
        if key not in known:
            raise ValueError(f"the state dict holds {key!r}, which {name} does not have (is it "
                             f"another model's? {name}'s first key is {expected[0].key!r})")
    for entry in expected:
        if entry.variable is not None:
            entry.variable.set_value(jnp.asarray(entry.from_torch(arrays[entry.key]),
                                                 entry.variable.get_value().dtype))
    return model


def from_torch(name: str, state_dict: dict[str, Any], **create_kwargs: Any) -> nnx.Module:
    """The registry model ``name`` (``models.create(name, **create_kwargs)``) with the book's
    PyTorch module's ``state_dict`` (torch tensors or NumPy arrays) loaded, in eval mode.
    Input: float32 NHWC images ``data.preprocess(uint8_images, image_size)``.

    The model is built abstractly (``nnx.eval_shape``: its initial weights, which the state
    dict replaces, are never computed) and only its other state (dropout's RNG) for real."""
    def build():
        return models.create(name, **create_kwargs)

    model = load_state_dict(nnx.eval_shape(build), state_dict, name)
    rest = nnx.Not(WEIGHTS)
    if jax.tree.leaves(nnx.state(model, rest)):
        nnx.update(model, jax.jit(lambda: nnx.state(build(), rest))())
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# safetensors files and workdirs
# ----------------------------------------------------------------------------------------------

def save_safetensors(path: str | Path, state_dict: dict[str, np.ndarray],
                     metadata: dict[str, str]) -> None:
    """Write ``state_dict`` to ``path`` (a ``.safetensors`` file PyTorch reads with
    ``safetensors.torch.load_file``), with string ``metadata``."""
    from safetensors.numpy import save_file

    save_file(state_dict, str(path), metadata=metadata)


def load_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(state_dict, metadata)`` of a ``.safetensors`` file; ``ValueError`` naming it when it
    cannot be read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file (expected a .safetensors state dict)")
    try:
        with safe_open(str(path), framework="np") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except Exception as error:                       # safetensors raises its own error types
        raise ValueError(f"cannot read {str(path)!r} as safetensors: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                         ) from None


def make_workdir(workdir: str | Path, model: nnx.Module, cfg: Config, source: str) -> None:
    """A new workdir that holds ``model``'s weights (built for ``cfg``) as its best and latest
    checkpoint, at epoch 0, step 0, with ``config.json``: ``train.load_model``, ``jaxcnn
    eval`` read it, and ``jaxcnn train`` with the same config trains on from these weights.
    ``source`` is recorded in the checkpoint's meta."""
    from jaxcnn import report
    from jaxcnn.checkpoints import Checkpoints
    from jaxcnn.train import Trainer, new_meta

    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ValueError(f"workdir {str(workdir)!r} exists and is not an empty directory: "
                         f"convert makes a new one")
    trainer = Trainer(cfg, 1)
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    state = {**trainer.initial_state, "params": params, "batch_stats": batch_stats,
             "opt_state": trainer.tx.init(params)}
    meta = {**new_meta(cfg), "converted_from": source}
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        checkpoints.save(0, state, meta, best=True)
    finally:
        checkpoints.close()
    report.write_json(workdir / "config.json", cfg.to_dict())


def load_workdir(workdir: str | Path, which: str = "best") -> tuple[nnx.Module, Config]:
    """A run's model (``train.load_model``: eval mode) and the config it was trained with."""
    from jaxcnn import train

    model = train.load_model(workdir, which)          # names what is missing, if anything
    return model, Config.read(Path(workdir) / "config.json")


# ----------------------------------------------------------------------------------------------
# jaxcnn convert
# ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxcnn convert`` arguments, added to ``parser``."""
    parser.add_argument("source", help="a workdir (with --to), or a .safetensors file of the "
                                       "book's PyTorch state dict (with --from-torch)")
    parser.add_argument("--to", metavar="FILE.safetensors",
                        help="write the workdir's weights as the PyTorch model's state dict")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="the workdir's checkpoint to write (default: best)")
    parser.add_argument("--from-torch", action="store_true",
                        help="read SOURCE as a PyTorch state dict into a new --workdir")
    parser.add_argument("--model", help="the registry model the state dict is of (default: "
                                        "the one the file's metadata names)")
    parser.add_argument("--image-size", type=int,
                        help="the input side the weights are for (default: the file's metadata, "
                             "else the book's)")
    parser.add_argument("--workdir", help="the workdir to make (with --from-torch)")


def run(args: argparse.Namespace) -> int:
    """``jaxcnn convert``: a workdir to safetensors, or safetensors to a new workdir."""
    if args.from_torch:
        if not args.workdir or args.to:
            raise ValueError("--from-torch reads SOURCE.safetensors into a new --workdir DIR; "
                             f"got --workdir {args.workdir!r} and --to {args.to!r}")
        state_dict, metadata = load_safetensors(args.source)
        name = args.model or metadata.get("jaxcnn_model")
        if name is None:
            raise ValueError(f"{args.source!r} names no model in its metadata: pass --model "
                             f"(one of {', '.join(models.REGISTRY)})")
        size = args.image_size or int(metadata.get("image_size", models.spec(name).image_size))
        overrides = json.loads(metadata.get("model_overrides", "{}"))
        cfg = Config(model=name, image_size=size, model_overrides=overrides)
        model = from_torch(name, state_dict, image_size=size, **overrides)
        make_workdir(args.workdir, model, cfg, source=str(args.source))
        print(f"{name} ({size}x{size}) from {args.source}: {len(state_dict)} tensors into "
              f"{args.workdir} (jaxcnn eval {args.workdir} tests it)")
        return 0
    if not args.to or args.workdir or args.model or args.image_size:
        raise ValueError("convert WORKDIR takes --to FILE.safetensors (and --which); "
                         "--model, --image-size and --workdir go with --from-torch")
    model, cfg = load_workdir(args.source, args.which)
    state_dict = to_torch(model)
    save_safetensors(args.to, state_dict, {
        "jaxcnn_model": cfg.model, "image_size": str(cfg.image_size),
        "model_overrides": json.dumps(cfg.model_overrides), "layout": "pytorch (NCHW, OIHW)"})
    print(f"{cfg.model} ({cfg.image_size}x{cfg.image_size}) {args.which} checkpoint of "
          f"{args.source}: {len(state_dict)} tensors to {args.to} (PyTorch: "
          f"model.load_state_dict(safetensors.torch.load_file(...)))")
    return 0
