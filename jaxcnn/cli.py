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
        raise argparse.ArgumentTypeError(f"expected N,H,W,C (NHWC integers), got {text!r}")
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers N,H,W,C (NHWC), "
                                         f"got {text!r}")
    return shape


def cmd_summary(args: argparse.Namespace) -> int:
    from jaxcnn import models, summary

    spec = models.spec(args.model)
    shape = args.input_shape or (1, spec.image_size, spec.image_size, 1)
    if shape[1] != shape[2]:
        raise ValueError(f"the models are built for square images; got H={shape[1]}, "
                         f"W={shape[2]} in --input-shape {','.join(map(str, shape))}")
    model = models.create(args.model, in_channels=shape[3], image_size=shape[1])
    print(f"{args.model}: {spec.description}, input {shape} (NHWC)")
    summary.layer_summary(model, shape)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jaxcnn.models import REGISTRY

    parser = argparse.ArgumentParser(prog="jaxcnn", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    summary = commands.add_parser("summary", help="per-layer output shapes, parameters and "
                                                  "multiply-adds of a model")
    summary.add_argument("model", help=f"one of: {', '.join(REGISTRY)}")
    summary.add_argument("--input-shape", type=_shape, metavar="N,H,W,C",
                         help="input shape, NHWC (default: 1 image at the book's size)")
    summary.set_defaults(run=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"jaxcnn {args.command}: error: {error}", file=sys.stderr)
        return 2
