"""``jaxcnn bench``: train/eval throughput, compile time and FLOP rate of the models, the input
pipeline's rate, and (``--compare-torch``) the same train step in the book's PyTorch models.

Each model is timed through ``train.Trainer``'s ``train_step`` as ``fit`` calls it (the host
batch moved to the device, then one jitted step: resize and normalise, forward, cross-entropy,
backward, SGD update) on one real Fashion-MNIST batch, uint8 ``(B, 28, 28, 1)``. The first
call (trace, compile, one step) is timed apart; then ``repeats`` timed runs of ``steps`` steps,
reported as the median images/s with the min-max. A repeat during which other processes used
more than ``MAX_FOREIGN`` of the CPU (read from /proc) is run again, up to ``RETRIES`` times.
FLOP/s counts 6 x the forward multiply-adds per image (backward ~ 2 x forward, 2 FLOPs per
multiply-add). With ``--compare-torch`` the book's PyTorch models (``jaxcnn.torch_models``,
with PyTorch's defaults or ``tuned``) run in a child process that is asked for one timed repeat
at a time, alternating with the JAX side, so the two never share the cores; the ratio is the
median (min-max) of the per-pair ratios JAX / PyTorch.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, models, summary
from jaxcnn.config import Config

DEFAULT_MODELS = ("lenet", "resnet18", "vgg")
TARGET_REPEAT_S = 2.0    # --steps auto: enough steps for about this many seconds per repeat
MAX_AUTO_STEPS = 200
MAX_FOREIGN = 0.05       # a repeat in which other processes used more of the CPU is run again,
RETRIES = 2              # at most this many times
PIPELINE_TARGET = 50.0   # the input pipeline should outrun LeNet's training this many times
TORCH_MODES = ("default", "tuned")   # PyTorch's defaults, or torch_models.TUNED_SETTINGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxcnn bench`` flags, added to ``parser`` (a subparser made by the CLI)."""
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"registry names (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"train/eval steps per timed repeat (default: enough for about "
                             f"{TARGET_REPEAT_S:g} s, at most {MAX_AUTO_STEPS})")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side for every model (default: each model's book size)")
    parser.add_argument("--dtype", choices=models.COMPUTE_DTYPES, default="float32",
                        help="JAX's compute dtype (parameters stay float32; PyTorch's side "
                             "is always float32)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="also write the results as JSON to PATH (alone: to stdout)")
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="time K seeds' train steps together, images/s summed over them "
                             "(default 1)")
    parser.add_argument("--seeds-mode", choices=("vmap", "interleave"),
                        help="how --seeds train together (default: vmap on GPUs, interleave "
                             "on CPUs)")
    parser.add_argument("--compare-torch", nargs="?", const="default", choices=TORCH_MODES,
                        help="time the book's PyTorch models alternately with the JAX ones, "
                             "with PyTorch's defaults (alone: default) or tuned (channels_last, "
                             "bf16 autocast, cudnn.benchmark, TF32, torch.compile where they "
                             "apply); put MODEL names before it (needs pip install -e "
                             "'.[bench]')")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark of ``args`` (see ``add_arguments``); print the table (and JSON)."""
    for name in ("batch_size", "steps", "repeats", "image_size", "seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    names = list(args.models or DEFAULT_MODELS)
    for name in names:
        models.spec(name)                      # unknown names fail before any work
    if args.json not in (None, "-"):
        check_writable(Path(args.json))
    torch_side = None
    if args.compare_torch:
        if importlib.util.find_spec("torch") is None:
            print("jaxcnn bench: error: --compare-torch needs PyTorch, which this Python "
                  f"({sys.executable}) cannot import; install it with: pip install -e '.[bench]'",
                  file=sys.stderr)
            return 2
        torch_side = TorchSide(tuned=args.compare_torch == "tuned")
    images, labels = data.fashion_mnist("train")
    if args.batch_size > len(labels):
        raise ValueError(f"--batch-size {args.batch_size:,} exceeds the {len(labels):,} training "
                         f"images a benchmark batch is taken from")
    batch = {"image": images[:args.batch_size], "label": labels[:args.batch_size],
             "mask": np.ones(args.batch_size, bool)}
    results = {**environment(), "batch_size": args.batch_size, "dtype": args.dtype,
               "models": []}
    try:
        for name in names:
            size = args.image_size or models.spec(name).image_size
            row = bench_model(name, batch, size, args.steps, args.repeats, torch_side,
                              args.dtype, seeds=args.seeds, seeds_mode=args.seeds_mode)
            results["models"].append(row)
            print(f"{name}: {row['train_images_per_s']['median']:,.1f} images/s", file=sys.stderr)
        if torch_side is not None:
            results["torch"] = torch_side.version
            results["torch_mode"] = args.compare_torch
            results["torch_settings"] = torch_side.settings
    finally:
        if torch_side is not None:
            torch_side.close()
    results["pipeline"] = bench_pipeline(images, labels, args.batch_size, args.repeats,
                                         results["models"])
    print(format_table(results))
    if args.json == "-":
        print(json.dumps(results, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def check_writable(path: Path) -> None:
    """``ValueError`` naming ``path`` unless a file can be written there (tried by opening it
    for appending, so that a missing folder, a directory or a read-only place is found before
    the benchmark runs, not after); a file this creates is removed again."""
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise ValueError(f"--json {str(path)!r} cannot be written ({error.strerror or error}); "
                         f"give a writable file path") from None
    if not existed:
        path.unlink()


def environment() -> dict[str, Any]:
    """The machine and versions the numbers belong to."""
    import flax

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device_kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
            "device_count": jax.device_count(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "flax": flax.__version__,
            "python": platform.python_version(), "load_1min": os.getloadavg()[0],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _seconds(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of ``fn()`` until its result is ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _cpu_ticks(pids: list[Any]) -> tuple[int, int, int] | None:
    """(busy ticks of the machine, all its ticks, ticks of the processes ``pids``) from /proc;
    None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:8]]
        own = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])          # utime + stime, all threads
    except (OSError, ValueError, IndexError):
        return None
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks), own   # less idle and iowait


def _foreign_share(before, after) -> float:
    """The share of the machine's CPU time that other processes used between two
    ``_cpu_ticks`` readings (0.0 when unknown)."""
    if before is None or after is None or after[1] == before[1]:
        return 0.0
    busy, total, own = (a - b for a, b in zip(after, before, strict=True))
    return max(0.0, (busy - own) / total)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_model(name: str, batch: dict[str, np.ndarray], image_size: int, steps: int | None,
                repeats: int, torch_side: TorchSide | None = None,
                dtype: str = "float32", *, seeds: int = 1,
                seeds_mode: str | None = None) -> dict[str, Any]:
    """Train/eval images/s, first-step seconds, FLOP rate and peak memory of model ``name``.

    ``batch``: ``{"image": uint8 (B, 28, 28, 1), "label": int32 (B,), "mask": bool (B,)}``.
    ``steps`` None: chosen from the second step's time (see ``TARGET_REPEAT_S``).
    ``seeds`` > 1: the train step of that many seeds in one ``train.SeedGroup`` (``seeds_mode``
    'vmap' or 'interleave'; default ``train.default_seed_mode()``), images/s summed over the
    seeds; PyTorch's side trains one model, as K seeds there are K runs one after another.
    """
    from jaxcnn import train  # deferred: it imports Orbax, slow for `jaxcnn --help`

    batch_size = len(batch["label"])
    torch_params = torch_side.build(name, batch_size, image_size) if torch_side else None
    trainer = train.Trainer(Config(model=name, batch_size=batch_size, image_size=image_size,
                                   dtype=dtype), 1)
    mode = None
    if seeds > 1:
        mode = seeds_mode or train.default_seed_mode()
        if mode not in ("vmap", "interleave"):
            raise ValueError(f"--seeds-mode for the benchmark is vmap or interleave (sequential "
                             f"is one seed's rate); got {mode!r}")
    # A step too big for the device: a clear error.
    train.check_memory(trainer, batch_size * (seeds if mode == "vmap" else 1))
    initial = trainer.initial_state
    model = nnx.merge(trainer.graphdef, initial["params"], initial["batch_stats"],
                      trainer.constants)
    macs = summary.layer_summary(model, (1, image_size, image_size, 1), print_fn=None)[-1].macs
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(initial["params"]))
    state = jax.tree.map(jnp.copy, initial)            # train_step donates its input
    group = (trainer.group([trainer.init(seed) for seed in range(seeds)], mode)
             if seeds > 1 else None)
    per_step = batch_size * seeds                     # images a step trains, over the seeds

    def train(n: int) -> Callable[[], Any]:
        def loop():
            nonlocal state
            for _ in range(n):
                if group is None:
                    state, loss = trainer.train_step(state, batch)
                else:
                    loss = group.step([batch] * seeds)
            return loss
        return loop

    first_s = _seconds(train(1))
    step_s = _seconds(train(1))                        # warm-up, and the auto step count
    if steps is None:
        steps = int(max(1, min(MAX_AUTO_STEPS, round(TARGET_REPEAT_S / step_s))))
    row: dict[str, Any] = {"model": name, "image_size": image_size, "batch_size": batch_size,
                           "params": params, "macs_per_image": macs, "steps": steps,
                           "repeats": repeats, "seeds": seeds, "seeds_mode": mode}
    if torch_side is not None:
        row["torch_params"] = torch_params
        row["torch_warmup_s"] = torch_side.warmup_s
    pids = ["self"] + ([torch_side.process.pid] if torch_side is not None else [])
    jax_rates, torch_rates, foreign = [], [], []
    for _ in range(repeats):
        for _attempt in range(RETRIES + 1):   # a repeat (pair) others shared the CPU in, again
            before = _cpu_ticks(pids)
            jax_rate = steps * per_step / _seconds(train(steps))
            if torch_side is not None:
                torch_rate = steps * batch_size / torch_side.time(steps)
            share = _foreign_share(before, _cpu_ticks(pids))
            if share < MAX_FOREIGN:
                break
        jax_rates.append(jax_rate)
        if torch_side is not None:
            torch_rates.append(torch_rate)
        foreign.append(share)
    row["foreign_cpu_max"] = max(foreign)
    row["train_images_per_s"] = _spread(jax_rates)
    # The first call less one step at the median rate: trace and compile. Not clamped: a
    # negative value would say that the timing is wrong (a first call faster than a step).
    row["first_call_s"] = first_s
    row["compile_s"] = first_s - per_step / row["train_images_per_s"]["median"]
    row["gflop_per_s"] = 6 * macs * row["train_images_per_s"]["median"] / 1e9
    if torch_side is not None:
        row["torch_images_per_s"] = _spread(torch_rates)
        row["jax_over_torch"] = _spread([j / t for j, t in
                                         zip(jax_rates, torch_rates, strict=True)])

    def evaluate():
        return [trainer.eval_step(state, batch) for _ in range(steps)]

    jax.block_until_ready(trainer.eval_step(state, batch))   # compile
    row["eval_images_per_s"] = statistics.median(
        steps * batch_size / _seconds(evaluate) for _ in range(repeats))
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def bench_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int, repeats: int,
                   rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches/s of ``data.batches`` over the training set (uint8 ``(N, 28, 28, 1)``), median
    of ``repeats`` epochs, and its ratio to LeNet's train-step consumption when LeNet ran."""
    rates = []
    for epoch in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in data.batches(images, labels, batch_size, seed=0, epoch=epoch,
                                            train=True))
        rates.append(count / (time.perf_counter() - start))
    result: dict[str, Any] = {"batches_per_s": statistics.median(rates),
                              "batch_size": batch_size, "target_ratio": PIPELINE_TARGET}
    lenet = [r for r in rows if r["model"] == "lenet"]
    if lenet:
        consumed = lenet[0]["train_images_per_s"]["median"] / lenet[0]["batch_size"]
        result["ratio_to_lenet"] = result["batches_per_s"] / consumed
    return result


class TorchSide:
    """``python -m jaxcnn.torch_models --serve`` in a child process, asked for one timed
    repeat at a time (requests and replies are JSON lines); ``tuned``: PyTorch's tuned
    settings where they apply (``settings`` says which, and why the others are not)."""

    def __init__(self, tuned: bool = False):
        self.tuned = tuned
        self.process = subprocess.Popen([sys.executable, "-m", "jaxcnn.torch_models", "--serve"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = None
        self.settings: dict[str, str | None] = {}
        self.warmup_s = 0.0

    def _ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the PyTorch side exited (its error is printed above)")
        return json.loads(reply)

    def build(self, name: str, batch_size: int, image_size: int) -> int:
        """Build the book's ``name`` in PyTorch, warm it up; returns its parameter count."""
        reply = self._ask(op="build", model=name, batch_size=batch_size, image_size=image_size,
                          warmup=1, tuned=self.tuned)
        if "error" in reply:
            raise ValueError(f"--compare-torch: {reply['error']}")
        self.version = (f"{reply['torch']} on {reply['device']} ({reply['threads']} threads), "
                        f"{reply['described']}")
        self.settings = reply["settings"]
        self.warmup_s = reply["warmup_s"]            # one step, and torch.compile's compile
        return reply["params"]

    def time(self, steps: int) -> float:
        """Seconds for ``steps`` PyTorch train steps."""
        return self._ask(op="time", steps=steps)["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def format_table(results: dict[str, Any]) -> str:
    """The results as a text table, with the machine, versions and the pipeline's rate."""
    head = (f"{results['device_kind']} ({results['platform']}, {results['cpu']}, "
            f"{results['cpu_count']} cores)  jax {results['jax']}  flax {results['flax']}"
            + (f"  torch {results['torch']}" if "torch" in results else "")
            + f"  batch {results['batch_size']}, {results['dtype']}"
            + (f"\nXLA_FLAGS={results['xla_flags']}" if results.get("xla_flags") else ""))
    compare = "torch" in results
    table = [("model", "size", "steps", "train img/s (min-max)", "compile s", "eval img/s",
              "MMAC/img", "GFLOP/s", "peak RSS MiB")
             + (("torch img/s", "JAX/torch (min-max)") if compare else ())]
    for r in results["models"]:
        t = r["train_images_per_s"]
        seeds = f" x{r['seeds']} {r['seeds_mode']}" if r.get("seeds", 1) > 1 else ""
        line = (r["model"] + seeds, str(r["image_size"]), f"{r['repeats']}x{r['steps']}",
                f"{t['median']:,.1f} ({t['min']:,.1f}-{t['max']:,.1f})", f"{r['compile_s']:.1f}",
                f"{r['eval_images_per_s']:,.1f}", f"{r['macs_per_image'] / 1e6:,.1f}",
                f"{r['gflop_per_s']:,.0f}", f"{r['peak_rss_mib']:,.0f}")
        if compare:
            q = r["jax_over_torch"]
            line += (f"{r['torch_images_per_s']['median']:,.1f}",
                     f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in table]
    lines.insert(1, "-" * len(lines[0]))
    p = results["pipeline"]
    pipeline = f"input pipeline: {p['batches_per_s']:,.0f} batches/s of {p['batch_size']}"
    if "ratio_to_lenet" in p:
        verdict = "ok" if p["ratio_to_lenet"] >= p["target_ratio"] else "BELOW"
        pipeline += (f", {p['ratio_to_lenet']:,.0f}x LeNet's consumption "
                     f"(target >= {p['target_ratio']:g}x: {verdict})")
    busy = [f"{r['model']} {r['foreign_cpu_max']:.0%}" for r in results["models"]
            if r["foreign_cpu_max"] >= MAX_FOREIGN]
    if busy:
        pipeline += ("\nwarning: other processes used the CPU during timed repeats (at most: "
                     f"{', '.join(busy)}), so those numbers are low and noisy")
    return "\n".join([head, *lines, pipeline])
