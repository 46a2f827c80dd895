"""``layer_summary``: the book's per-layer output shapes, plus parameters and multiply-adds.

Shapes come from tracing (no computation); multiply-adds are counted exactly from the traced
program: each ``conv_general_dilated`` and ``dot_general`` contributes its output size times
the length of what it sums over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import jax
import numpy as np
from flax import nnx


@dataclass(frozen=True)
class LayerRow:
    """One row of the summary: a top-level layer, or the total (``name == 'Total'``)."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.shape
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec   # (out feature, in feature, spatial...)
        return math.prod(out) * math.prod(rhs[d] for d in spec[1:])
    if name == "dot_general":
        lhs = eqn.invars[0].aval.shape
        (contracting, _), _ = eqn.params["dimension_numbers"]
        return math.prod(out) * math.prod(lhs[d] for d in contracting)
    return 0


def _subjaxprs(value: Any):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _subjaxprs(item)


def count_macs(jaxpr) -> int:
    """Multiply-adds of convolutions and matrix products in ``jaxpr`` (nested calls included;
    a loop body counts once)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                total += count_macs(sub)
    return total


def largest_array_bytes(jaxpr) -> int:
    """Bytes of the largest value ``jaxpr`` computes (nested calls included): a lower bound
    on the memory that running it takes."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", None)
            if shape is not None:
                largest = max(largest, math.prod(shape) * var.aval.dtype.itemsize)
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                largest = max(largest, largest_array_bytes(sub))
    return largest


def _layer_name(layer: Any) -> str:
    if isinstance(layer, nnx.Module):
        return type(layer).__name__
    return getattr(layer, "__name__", type(layer).__name__)


def _num_params(layer: Any) -> int:
    if not isinstance(layer, nnx.Module):
        return 0
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))


def layer_summary(model: nnx.Module, input_shape: Sequence[int], *,
                  print_fn=print) -> list[LayerRow]:
    """One row per top-level layer of ``model`` (each element of an ``nnx.Sequential``, or the
    whole module otherwise) on an input of ``input_shape`` (NHWC), in eval mode, and a total.

    Prints the table through ``print_fn`` (``None`` for silence) and returns the rows. The model
    itself is not touched: it is traced through ``nnx.split`` / ``nnx.merge``.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"layer_summary expects an nnx.Module (e.g. models.create('lenet')); "
                        f"got {type(model).__name__} {model!r:.60}")
    if not (isinstance(input_shape, Sequence) and len(input_shape) == 4
            and all(isinstance(n, Integral) and n > 0 for n in input_shape)):
        raise ValueError(f"layer_summary expects input_shape as four positive ints (N, H, W, C), "
                         f"NHWC; got {input_shape!r}")
    graphdef, state = nnx.split(model)
    abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    layers = list(model.layers) if isinstance(model, nnx.Sequential) else [model]
    x = jax.ShapeDtypeStruct(tuple(int(n) for n in input_shape), jax.numpy.float32)
    rows = []
    for index, layer in enumerate(layers):
        def apply(state, x, index=index):
            module = nnx.merge(graphdef, state)
            module.eval()
            return module.layers[index](x) if isinstance(module, nnx.Sequential) else module(x)

        closed = jax.make_jaxpr(apply)(abstract_state, x)
        out = closed.out_avals[0]
        rows.append(LayerRow(_layer_name(layer), tuple(out.shape), _num_params(layer),
                             count_macs(closed.jaxpr)))
        x = jax.ShapeDtypeStruct(out.shape, out.dtype)
    rows.append(LayerRow("Total", rows[-1].output_shape, sum(r.params for r in rows),
                         sum(r.macs for r in rows)))
    if print_fn is not None:
        print_fn(format_rows(rows))
    return rows


def format_rows(rows: Sequence[LayerRow]) -> str:
    """The rows as an aligned text table."""
    table = [("layer", "output shape", "params", "multiply-adds")]
    table += [(r.name, str(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}"
             for a, b, c, d in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
