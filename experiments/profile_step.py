"""Where a train step's time goes: ``jaxcnn``'s jitted train step (as ``jaxcnn bench`` times it)
under ``jax.profiler``, its XLA ops grouped by kind.

    python experiments/profile_step.py resnet18                  # the book's size (96 px)
    python experiments/profile_step.py lenet vgg --image-size 64 --steps 5

Run it under the exclusive CPU lock (``flock -x /tmp/jaxcnn-cpu.lock ...``): its seconds are a
measurement. Each op the XLA runtime executes (a thunk: one fusion, convolution, dot or copy of
the compiled step) is one profiler event, named after its HLO instruction; the compiled HLO tells
what the instruction is (its opcode and those of its fused computation) and which Python code it
came from (the stack frames and named scopes of its metadata). Kinds:

* ``conv forward`` / ``conv input grad`` / ``conv weight grad``: convolutions. A backward
  convolution whose output has a convolution kernel's dimensions is a weight gradient; one
  from a transposed kernel an input gradient.
* ``transposes + copies``: layout changes (``transpose``, ``copy``) on their own.
* ``batchnorm reductions`` / ``batchnorm elementwise``: ops from BatchNorm code (statistics
  and their gradients; normalisation passes).
* ``pooling`` (``reduce-window``, ``select-and-scatter``, the pooling functions), ``resize``
  (``data.preprocess``), ``dense (dot)``, ``optimizer``, ``loss``, ``other reductions``,
  ``elementwise`` (the remaining fusions) and ``other``.

The runtime runs convolutions and dots asynchronously on its thread pool, so their events end
early: each such op is taken to end where the first op that reads its result starts. Where ops
overlap (two independent ops on the two cores), each gets an equal share of that time, so the
kinds add up to the profiled step; "idle" is time within the step when no op ran (dispatch,
waiting for threads). The wall time is timed apart, without the profiler.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jaxcnn import xla_flags

xla_flags.apply()          # as the CLI does, before JAX starts its backends

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn import data, models, parallel  # noqa: E402
from jaxcnn.config import Config  # noqa: E402

KINDS = ("conv forward", "conv input grad", "conv weight grad", "transposes + copies",
         "batchnorm reductions", "batchnorm elementwise", "pooling", "resize", "dense (dot)",
         "optimizer", "loss", "other reductions", "elementwise", "other")
MOVES = {"transpose", "copy", "bitcast", "parameter", "reshape", "constant", "tuple",
         "get-tuple-element"}
BATCHNORM_CODE = ("BatchNorm", "batch_norm", "_compute_stats", "_normalize")
POOL_CODE = ("max_pool2d", "avg_pool2d", "global_avg_pool")


# --------------------------------------------------------------------------------------------
# The compiled HLO module, as text
# --------------------------------------------------------------------------------------------

@dataclass
class Instruction:
    name: str
    opcode: str
    shape: str
    op_name: str = ""
    frame: int = 0
    calls: str | None = None
    operands: tuple[str, ...] = ()


@dataclass
class Module:
    computations: dict[str, list[Instruction]] = field(default_factory=dict)
    frames: dict[int, tuple[int, int]] = field(default_factory=dict)   # id -> (location, parent)
    locations: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (file, function)

    def instruction(self, name: str) -> Instruction | None:
        for body in self.computations.values():
            for inst in body:
                if inst.name == name:
                    return inst
        return None

    def body(self, inst: Instruction) -> list[Instruction]:
        """``inst`` and, for a fusion or call, every instruction it calls (recursively)."""
        found, todo = [inst], [inst.calls] if inst.calls else []
        while todo:
            for sub in self.computations.get(todo.pop(), []):
                found.append(sub)
                if sub.calls:
                    todo.append(sub.calls)
        return found

    def code(self, frame: int) -> list[str]:
        """'file:function' of stack frame ``frame`` and its callers."""
        names, seen = [], set()
        while frame in self.frames and frame not in seen:
            seen.add(frame)
            location, parent = self.frames[frame]
            names.append(":".join(self.locations.get(location, ("?", "?"))))
            frame = parent
        return names


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*)$")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")


def _split_shape(rest: str) -> tuple[str, str]:
    """``'f32[2,3]{1,0} fusion(...)...'`` -> ``('f32[2,3]{1,0}', 'fusion(...)...')``; tuple
    shapes in parentheses too."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def parse_hlo(text: str) -> Module:
    """The computations, instructions and stack-frame tables of an HLO module's text."""
    module, table, current = Module(), None, None
    files, functions, locations = {}, {}, {}
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            table = line
            continue
        if table is not None:
            row = _TABLE_ROW.match(line)
            if row:
                key, value = int(row.group(1)), row.group(2)
                if table == "FileNames":
                    files[key] = value.strip('"')
                elif table == "FunctionNames":
                    functions[key] = value.strip('"')
                elif table == "FileLocations":
                    fields = dict(re.findall(r"(\w+)=(\d+)", value))
                    locations[key] = (int(fields["file_name_id"]),
                                      int(fields["function_name_id"]))
                else:
                    fields = dict(re.findall(r"(\w+)=(\d+)", value))
                    # the printed parent is one more than the parent frame's id (0: none)
                    module.frames[key] = (int(fields["file_location_id"]),
                                          int(fields["parent_frame_id"]) - 1)
                continue
            table = None
        head = re.match(r"^(?:ENTRY\s+)?%(\S+)\s.*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            module.computations[current] = []
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            shape, rest = _split_shape(match.group(2))
            opcode = rest.split("(", 1)[0]
            op_name = re.search(r'op_name="([^"]*)"', rest)
            frame = re.search(r"stack_frame_id=(\d+)", rest)
            calls = re.search(r"calls=%([\w.\-]+)", rest)
            args = _split_shape(rest[len(opcode):])[0]         # the parenthesised operands
            module.computations[current].append(Instruction(
                match.group(1), opcode, shape, op_name.group(1) if op_name else "",
                int(frame.group(1)) if frame else 0, calls.group(1) if calls else None,
                tuple(re.findall(r"%([\w.\-]+)", args))))
    module.locations = {k: (Path(files.get(f, "?")).name, functions.get(fn, "?"))
                        for k, (f, fn) in locations.items()}
    return module


def _dims(shape: str) -> tuple[int, ...]:
    match = re.match(r"\w+\[([\d,]*)\]", shape)
    return tuple(int(d) for d in match.group(1).split(",") if d) if match else ()


def classify(module: Module, inst: Instruction, kernels: set[tuple[int, ...]]) -> str:
    """The kind (one of ``KINDS``) of top-level instruction ``inst``; ``kernels``: the sorted
    dimensions of the model's convolution kernels. The opcodes come from the whole fused
    computation; the code and named scopes from the instruction's own metadata, else its
    root's (XLA fuses the producers of other layers into a fusion's inputs, so the root says
    what the fusion is for)."""
    body = module.body(inst)
    opcodes = {i.opcode for i in body}
    root = module.computations.get(inst.calls or "", [inst])[-1]   # a computation's ROOT is last
    tagged = [i for i in (inst, root, *body) if i.frame or i.op_name]
    code = " ".join(module.code(tagged[0].frame)) if tagged else ""
    if opcodes <= MOVES or root.opcode in ("transpose", "copy"):
        return "transposes + copies"
    conv = [i for i in body if i.opcode == "convolution"]
    if conv:
        if tuple(sorted(_dims(conv[0].shape))) in kernels:
            return "conv weight grad"
        return "conv input grad" if "transpose(" in conv[0].op_name else "conv forward"
    if "preprocess" in code:
        return "resize"
    if any(name in code for name in BATCHNORM_CODE):
        return ("batchnorm reductions" if opcodes & {"reduce", "reduce-window"}
                else "batchnorm elementwise")
    if "select-and-scatter" in opcodes or any(p in code for p in POOL_CODE):
        return "pooling"
    if "dot" in opcodes:
        return "dense (dot)"
    if "optax" in code or "apply_updates" in code:
        return "optimizer"
    if "cross_entropy" in code:
        return "loss"
    if opcodes & {"reduce", "reduce-window"}:
        return "other reductions"
    if inst.opcode == "fusion" or opcodes & {"add", "multiply", "select", "maximum"}:
        return "elementwise"
    return "other"


# --------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------

def profile(name: str, image_size: int, batch_size: int, steps: int, dtype: str,
            hlo_path: str | None = None):
    """(wall ms per step, {kind: op ms per step}, [(op ms per step, kind, instruction)]);
    ``hlo_path``: where to write the compiled step's HLO text too."""
    from jaxcnn.train import Trainer  # deferred, as bench does (Orbax is slow to import)

    trainer = Trainer(Config(model=name, batch_size=batch_size, image_size=image_size,
                             dtype=dtype), 1)
    images, labels = data.fashion_mnist("train")
    batch = parallel.shard_batch({"image": images[:batch_size], "label": labels[:batch_size],
                                  "mask": np.ones(batch_size, bool)}, trainer.mesh)
    state = jax.tree.map(jnp.copy, trainer.initial_state)
    compiled = trainer._train_step.lower(state, batch).compile()
    module = parse_hlo(compiled.as_text())
    if hlo_path:
        Path(hlo_path).parent.mkdir(parents=True, exist_ok=True)
        Path(hlo_path).write_text(compiled.as_text())
    kernels = {tuple(sorted(p.shape)) for p in jax.tree.leaves(state["params"]) if p.ndim == 4}

    for _ in range(2):                                       # warm up
        state, loss = compiled(state, batch)
    jax.block_until_ready(loss)
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        state, loss = compiled(state, batch)
        jax.block_until_ready(loss)
        walls.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            for _ in range(steps):
                state, loss = compiled(state, batch)
            jax.block_until_ready(loss)
        path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
        runs = collections.defaultdict(list)          # run id -> [[start, end, op]] in ms
        for plane in jax.profiler.ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if "hlo_op" in stats and "train_step" in str(stats.get("hlo_module")):
                        runs[stats.get("run_id")].append(
                            [event.start_ns / 1e6, (event.start_ns + event.duration_ns) / 1e6,
                             stats["hlo_op"]])
    by_kind, by_op, idle = collections.Counter(), collections.Counter(), 0.0
    thunks = {op for intervals in runs.values() for _, _, op in intervals}
    users = thunk_users(module, thunks)
    for intervals in runs.values():
        finish_async_ops(module, intervals, users)
        shares, busy = attribute(intervals)
        idle += (max(e for _, e, _ in intervals) - min(s for s, _, _ in intervals) - busy)
        by_op.update(shares)
    ops_list = []
    for op, ms in by_op.items():
        inst = module.instruction(op)
        kind = classify(module, inst, kernels) if inst else "other"
        by_kind[kind] += ms / len(runs)
        ops_list.append((ms / len(runs), kind, inst.shape if inst else "", op))
    by_kind["idle (no op running)"] = idle / len(runs)
    return 1e3 * statistics.median(walls), by_kind, sorted(ops_list, reverse=True)


def thunk_users(module: Module, thunks: set[str]) -> dict[str, set[str]]:
    """For each instruction, the thunks (profiled ops) that read its result, through the
    instructions that run no thunk of their own (bitcasts, tuples)."""
    direct = collections.defaultdict(set)
    for body in module.computations.values():
        for inst in body:
            for operand in inst.operands:
                direct[operand].add(inst.name)
    found: dict[str, set[str]] = {}

    def users(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name not in found:
            result = set()
            for user in direct.get(name, ()):
                if user in thunks:
                    result.add(user)
                elif user not in seen:
                    result |= users(user, seen | {name})
            found[name] = result
        return found[name]

    return {name: users(name) for name in thunks}


ASYNC = {"convolution", "dot", "custom-call"}


def finish_async_ops(module: Module, intervals: list[list], users: dict[str, set[str]]) -> None:
    """XLA's CPU runtime runs convolutions and dots asynchronously on its Eigen thread pool:
    their profiler event ends when the work is handed over, not when it is done. End each such
    op where the first op that reads its result starts (in this run; in place)."""
    starts = collections.defaultdict(list)
    for start, _, op in intervals:
        starts[op].append(start)
    for interval in intervals:
        start, end, op = interval
        inst = module.instruction(op)
        if inst is None or not {i.opcode for i in module.body(inst)} & ASYNC:
            continue
        later = [t for user in users.get(op, ()) for t in starts.get(user, ()) if t >= start]
        if later:
            interval[1] = max(end, min(later))


def attribute(intervals: list[list]) -> tuple[collections.Counter, float]:
    """Each op's share of the run's wall time (ms): where k ops overlap, each gets 1/k of it;
    and the time during which any op ran."""
    edges = sorted([(s, 1, op) for s, _, op in intervals] + [(e, -1, op) for _, e, op in intervals])
    shares, active, busy, last = collections.Counter(), collections.Counter(), 0.0, None
    for time_ms, change, op in edges:
        running = +active
        if last is not None and running:
            dt = time_ms - last
            busy += dt
            for name, count in running.items():
                shares[name] += dt * count / sum(running.values())
        active[op] += change
        last = time_ms
    return shares, busy


def table(name: str, image_size: int, wall: float, by_kind, ops_list, top: int) -> str:
    total = sum(by_kind.values())
    lines = [f"{name} @{image_size}: wall {wall:.1f} ms/step (without the profiler); profiled "
             f"step {total:.1f} ms", "| kind | ms/step | share |", "|---|---|---|"]
    lines += [f"| {kind} | {by_kind[kind]:.2f} | {by_kind[kind] / total:.1%} |"
              for kind in (*KINDS, "idle (no op running)") if by_kind.get(kind)]
    if top:
        lines += ["", f"largest {top} ops:"]
        lines += [f"  {ms:8.2f} ms  {kind:22s} {op} {shape}"
                  for ms, kind, shape, op in ops_list[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side (default: the model's book size)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    parser.add_argument("--dtype", choices=models.COMPUTE_DTYPES, default="float32")
    parser.add_argument("--top", type=int, default=12, help="list the largest N ops")
    parser.add_argument("--hlo-dir", help="write each model's compiled step (HLO text) here")
    args = parser.parse_args(argv)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch_size}, "
          f"{args.dtype}")
    for name in args.models:
        size = args.image_size or models.spec(name).image_size
        hlo = f"{args.hlo_dir}/{name}-{size}.hlo.txt" if args.hlo_dir else None
        result = profile(name, size, args.batch_size, args.steps, args.dtype, hlo)
        print(table(name, size, *result, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
