"""The ``jaxcnn`` command line (also ``python -m jaxcnn``)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N,H,W,C (NHWC integers), got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers N,H,W,C (NHWC), "
                                         f"got {text!r}")
    return shape


def _given(what: str):
    """An argparse type that refuses an empty string, which would read as a flag not given."""
    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty string")
        return text
    return check


_path = _given("a path")


def _data_dir(text: str) -> str:
    from pathlib import Path

    path = Path(_path(text)).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected the directory of the Fashion-MNIST .gz "
                                         f"files; {text!r} is a file, not a directory")
    return text


def cmd_summary(args: argparse.Namespace) -> int:
    from flax import nnx

    from jaxcnn import models, summary

    spec = models.spec(args.model)
    shape = args.input_shape or (1, spec.image_size, spec.image_size, 1)
    if shape[1] != shape[2]:
        raise ValueError(f"the models are built for square images; got H={shape[1]}, "
                         f"W={shape[2]} in --input-shape {','.join(map(str, shape))}")
    # Shapes only: the table needs no parameter values, so any input size costs no memory.
    model = nnx.eval_shape(lambda: models.create(args.model, in_channels=shape[3],
                                                 image_size=shape[1]))
    print(f"{args.model}: {spec.description}, input {shape} (NHWC)")
    summary.layer_summary(model, shape)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import jax

    from jaxcnn import config, parallel, train

    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    cfg = config.recipe(args.model, args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, optimizer=args.optimizer, image_size=args.image_size,
                        seed=args.seed, data_dir=args.data_dir,
                        checkpoint_every=args.checkpoint_every, devices=args.devices,
                        dtype=args.dtype, val_examples=args.val_examples,
                        train_examples=args.train_examples, test_examples=args.test_examples)
    seeds = train.parse_seeds(args.seeds) if args.seeds is not None else None
    if seeds is not None and args.seed is not None:
        raise ValueError("--seed and --seeds both given: --seeds 3 trains seed 3 alone in a "
                         "group, --seed 3 as a single run")
    workdir = args.workdir or f"runs/{cfg.model}-{cfg.recipe}" + ("-seeds" if seeds else "")
    main = jax.process_index() == 0
    if main:
        base = config.recipe(cfg.model, cfg.recipe)
        changed = ["--" + name.replace("_", "-")
                   for name in ("optimizer", "lr", "batch_size", "epochs", "image_size")
                   if getattr(cfg, name) != getattr(base, name)]
        recipe = f"{cfg.recipe} recipe" + (f", {', '.join(changed)} changed" if changed else "")
        validation = (f"{cfg.val_examples:,} held-out training images validate, the test set "
                      f"is reported" if cfg.val_examples else
                      "the test set validates and picks the best checkpoint, as in the book")
        print(f"training {cfg.model} ({cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}, "
              f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, {cfg.image_size}x{cfg.image_size}; "
              f"{recipe}; {validation}"
              + (f"; seeds {args.seeds}, {len(seeds)} runs" if seeds else "") + f") in {workdir}")
        if cfg.dtype == "bfloat16" and jax.default_backend() == "cpu":
            print("note: bfloat16 compute is for GPUs; on a 2-core x86 CPU it ran at 0.76x "
                  "(LeNet) and 1.03x (ResNet-18) float32's speed (experiments/RESULTS.md)",
                  file=sys.stderr)
    on_epoch = None
    if args.tensorboard:
        from jaxcnn import tensorboard

        tensorboard.check_installed()
        on_epoch = tensorboard.log_tensorboard
    if seeds is not None:
        runs = train.fit_seeds(cfg, workdir, seeds, force_new=args.force_new,
                               mode=args.seeds_mode, on_epoch=on_epoch,
                               steps_per_dispatch=args.steps_per_dispatch)
        _finish(workdir, args, None)
        final = runs.summary[-1]["val_acc"] if runs.summary else None
        if final and main:
            print(f"final val_acc over {len(seeds)} seeds: median {final['median']:.4f}, mean "
                  f"{final['mean']:.4f} (sd {final['sd']:.4f}), min {final['min']:.4f}, max "
                  f"{final['max']:.4f}; each seed's run in {workdir}/seed-N, the summary in "
                  f"{workdir}/summary.json")
        return 0
    history = train.fit(cfg, workdir, force_new=args.force_new, on_epoch=on_epoch,
                        steps_per_dispatch=args.steps_per_dispatch)
    _finish(workdir, args, history)
    if history and main:
        tested = (f", test_acc {history[-1]['test_acc']:.4f}" if "test_acc" in history[-1]
                  else "")
        print(f"final val_acc {history[-1]['val_acc']:.4f}{tested}; metrics, curves and "
              f"checkpoints in {workdir}")
    return 0


def _finish(workdir: str, args: argparse.Namespace, history: list[dict] | None) -> None:
    """The end of ``jaxcnn train`` on process 0: the run report (unless ``--no-report``, or
    ``JAXCNN_REPORT=0``), and the confusion matrix into TensorBoard with ``--tensorboard``."""
    import os

    import jax

    if jax.process_index() != 0 or not args.report or os.environ.get("JAXCNN_REPORT") == "0":
        return
    from jaxcnn import diagnose

    page = diagnose.write_report(workdir, "best", data_dir=args.data_dir)
    print(f"report: {page}")
    if args.tensorboard and history:
        from jaxcnn import tensorboard

        tensorboard.log_tensorboard(workdir, history)     # now with the confusion matrix


def cmd_eval(args: argparse.Namespace) -> int:
    from jaxcnn import train

    result = train.evaluate_workdir(args.workdir, args.data_dir, args.which)
    print(f"{result['model']} {args.which} checkpoint (epoch {result['epoch']}, step "
          f"{result['step']}): "
          f"test_acc {result['test_acc']:.4f}  test_loss {result['test_loss']:.4f}  (all "
          f"{result['test_examples']:,} test images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jaxcnn.models import COMPUTE_DTYPES, REGISTRY

    parser = argparse.ArgumentParser(prog="jaxcnn", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    summary = commands.add_parser("summary", help="per-layer output shapes, parameters and "
                                                  "multiply-adds of a model")
    summary.add_argument("model", help=f"one of: {', '.join(REGISTRY)}")
    summary.add_argument("--input-shape", type=_shape, metavar="N,H,W,C",
                         help="input shape, NHWC (default: 1 image at the book's size)")
    summary.set_defaults(run=cmd_summary)

    train = commands.add_parser("train", help="train a model on Fashion-MNIST")
    train.add_argument("model", help=f"one of: {', '.join(REGISTRY)}")
    train.add_argument("--recipe", default="book", choices=("book", "improved"),
                       help="the book's hyperparameters, or ours (default: book)")
    train.add_argument("--epochs", type=int, help="default 10")
    train.add_argument("--batch-size", type=int, help="default 128")
    train.add_argument("--lr", type=float, help="default: the book's for the model")
    train.add_argument("--optimizer", choices=("sgd", "momentum", "adam", "adamw"),
                       help="default: the recipe's (book: sgd; improved: adamw for the LeNets, "
                            "momentum for the others)")
    train.add_argument("--image-size", type=int,
                       help="input side (default: the book's, 28 / 224 / 96)")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--seeds", metavar="LIST",
                       help="train one run per seed, e.g. 0-19 or 0,3,7, into WORKDIR/seed-N, "
                            "with their statistics in WORKDIR/summary.json")
    train.add_argument("--seeds-mode", choices=("vmap", "interleave", "sequential"),
                       help="how --seeds train: one vmapped step for all (default on GPUs), "
                            "their steps in turn (default on CPUs), or one after another")
    train.add_argument("--dtype", choices=COMPUTE_DTYPES,
                       help="compute dtype (default float32; parameters and optimizer state "
                            "stay float32)")
    train.add_argument("--workdir", type=_path, help="where metrics, curves and checkpoints go "
                                         "(default runs/MODEL-RECIPE); resumed if it holds a run")
    train.add_argument("--data-dir", type=_data_dir,
                       help="directory of the Fashion-MNIST .gz files")
    train.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                       help="steps between mid-epoch checkpoints (default 500; 0: epochs only)")
    train.add_argument("--train-examples", type=int, metavar="N",
                       help="train on the first N training images only (a reduced run)")
    train.add_argument("--test-examples", type=int, metavar="N",
                       help="evaluate on the first N test images only (a reduced run)")
    train.add_argument("--val-examples", type=int, metavar="N",
                       help="hold out N training images to validate and choose the best "
                            "checkpoint (default: book recipes 0, the test set validating as "
                            "in the book; improved recipes 5000)")
    train.add_argument("--steps-per-dispatch", type=int, default=1, metavar="K",
                       help="keep the training images on the device and run K steps in one "
                            "dispatch (for GPUs; results as with 1 to float32 rounding; default 1)")
    train.add_argument("--no-report", dest="report", action="store_false",
                       help="skip the run report (WORKDIR/report/, as jaxcnn report writes) at "
                            "the end; JAXCNN_REPORT=0 skips it too")
    train.add_argument("--tensorboard", action="store_true",
                       help="write TensorBoard events into WORKDIR/tensorboard/ (needs pip "
                            "install 'jaxcnn[tensorboard]')")
    train.add_argument("--force-new", action="store_true",
                       help="discard the workdir's checkpoints and metrics and start over")
    train.add_argument("--devices", type=int, metavar="N",
                       help="local devices per process for data parallelism (default: all)")
    multihost = train.add_argument_group(
        "multi-host", "join a jax.distributed run (or set JAX_COORDINATOR_ADDRESS, "
                      "JAX_NUM_PROCESSES, JAX_PROCESS_ID; --num-processes -1 lets JAX detect "
                      "SLURM)")
    multihost.add_argument("--coordinator", metavar="HOST:PORT", type=_given("HOST:PORT"),
                           help="address of process 0's coordinator")
    multihost.add_argument("--num-processes", type=int)
    multihost.add_argument("--process-id", type=int)
    train.set_defaults(run=cmd_train)

    bench = commands.add_parser("bench", help="train/eval throughput, compile time and memory "
                                              "of models, against PyTorch with --compare-torch")
    from jaxcnn import bench as bench_module

    bench_module.add_arguments(bench)
    bench.set_defaults(run=bench_module.run)

    from jaxcnn import diagnose, export, interop, predict

    # Each command's own module adds its arguments and runs it.
    for name, module, help_text in (
            ("convert", interop, "a run's weights to a safetensors file of the book's PyTorch "
                                 "state dict, or back into a new workdir (--from-torch)"),
            ("export", export, "a run's model with its preprocessing as StableHLO (jax.export) "
                               "or ONNX"),
            ("predict", predict, "the top 3 classes of your own images (PNG, JPEG) by a run's "
                                 "model"),
            ("report", diagnose, "what a run's network learned: confusion matrix, predictions, "
                                 "kernels, feature maps and one HTML page, in WORKDIR/report/")):
        command = commands.add_parser(name, help=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)

    evaluate = commands.add_parser("eval", help="test accuracy and loss of a run's best "
                                                "checkpoint")
    evaluate.add_argument("workdir", type=_path)
    evaluate.add_argument("--which", choices=("best", "latest"), default="best",
                          help="which checkpoint (default: best)")
    evaluate.add_argument("--data-dir", type=_data_dir,
                          help="directory of the Fashion-MNIST .gz files")
    evaluate.set_defaults(run=cmd_eval)
    return parser


def _flag_names(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The settings ``command`` has flags for, by the names of the Config fields and keyword
    arguments they set (``batch_size`` for ``--batch-size``), so that errors name the flags."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest for action in commands.choices[command]._actions
            if action.option_strings and action.dest != "help"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; errors print one line (a traceback too with ``--debug``). Exit codes:
    0 done, 2 bad input or files, 3 training diverged, 130 interrupted."""
    from jaxcnn import compile_cache, names, xla_flags
    from jaxcnn.train import DivergenceError

    xla_flags.apply()
    compile_cache.enable()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with names.flags(_flag_names(parser, args.command)):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"jaxcnn {args.command}: interrupted; run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, DivergenceError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"jaxcnn {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 3 if isinstance(error, DivergenceError) else 2
