"""A trained model outside the training code: StableHLO through ``jax.export``, and ONNX.

Both artifacts hold the preprocessing too: they take raw uint8 Fashion-MNIST images ``(N, 28,
28, 1)`` (any batch size N) and return float32 logits ``(N, 10)``, as ``train.load_model``'s
model does on ``data.preprocess(images, image_size)``.

- StableHLO (``jax.export``, for the CPU and CUDA): ``jax.export.deserialize(open(PATH,
  'rb').read()).call(images)`` in any JAX program, no jaxcnn needed.
- ONNX (``jax2onnx``; the ``export`` extra): every export is run by onnxruntime on a batch of
  seeded random images and compared with JAX's logits (to ``ONNX_TOLERANCE`` of the largest
  logit) before it is written; where jax2onnx cannot export a model, or onnxruntime cannot run
  the result, the error names the model and the operation.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import re
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")     # where the StableHLO artifact runs
ONNX_TOLERANCE = 1e-4           # onnxruntime's logits vs JAX's, relative to the largest
CHECK_IMAGES = 8                # images in the onnxruntime check
INPUT = ("N", 28, 28, 1)        # uint8 Fashion-MNIST images, N symbolic
INSTALL_ONNX = ("pip install -e '.[export]' && pip install --no-deps 'jax2onnx==0.17.1' "
                "(jax2onnx's metadata pins orbax-checkpoint < 0.11.37, which it does not "
                "import)")


def input_spec() -> jax.ShapeDtypeStruct:
    """uint8 ``(N, 28, 28, 1)`` with a symbolic batch dimension N."""
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(", ".join(map(str, INPUT))),
                                jnp.uint8)


def onnx_preprocess(images: jax.Array, image_size: int) -> jax.Array:
    """``data.preprocess`` written with ``jax.image.scale_and_translate``, the function behind
    ``jax.image.resize``: jax2onnx 0.17.1 exports it as matrix products, while it refuses
    ``jax.image.resize`` with antialiasing (ONNX's Resize has none) and with a symbolic batch.
    Equal to ``data.preprocess`` to float rounding (a test compares them)."""
    x = images.astype(jnp.float32) / 255.0
    b, h, w, c = x.shape
    if (h, w) == (image_size, image_size):
        return x
    return jax.image.scale_and_translate(
        x, (b, image_size, image_size, c), (1, 2), jnp.array([image_size / h, image_size / w]),
        jnp.zeros(2), "linear")


def serving_fn(model: nnx.Module, image_size: int,
               preprocess: Callable[[jax.Array, int], jax.Array] = data.preprocess
               ) -> Callable[[jax.Array], jax.Array]:
    """uint8 images ``(N, 28, 28, 1)`` -> float32 logits ``(N, classes)`` of ``model`` in eval
    mode, its weights held as constants."""
    graphdef, state = nnx.split(model)
    return lambda images: _eval_logits(graphdef, state, images, image_size, preprocess)


def _eval_logits(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, image_size: int,
                 preprocess: Callable[[jax.Array, int], jax.Array]) -> jax.Array:
    net = nnx.merge(graphdef, state, copy=True)       # fresh Variables in this trace
    net.eval()
    return net(preprocess(images, image_size)).astype(jnp.float32)


def to_stablehlo(model: nnx.Module, image_size: int) -> bytes:
    """``model`` serialised by ``jax.export`` for ``PLATFORMS``, preprocessing inside."""
    exported = jax.export.export(jax.jit(serving_fn(model, image_size)),
                                 platforms=PLATFORMS)(input_spec())
    return bytes(exported.serialize())


def _first_line(error: BaseException) -> str:
    """``error`` in one line, with the innermost jaxcnn function it came through."""
    text = " ".join(str(error).split())
    ours = [frame for frame in traceback.extract_tb(error.__traceback__)
            if Path(frame.filename).parent.name in ("jaxcnn", "models")]
    where = (f" (in {Path(ours[-1].filename).stem}.{ours[-1].name}, line {ours[-1].lineno})"
             if ours else "")
    return f"{type(error).__name__}{where}: {text[:300]}" if text else type(error).__name__


def to_onnx(model: nnx.Module, image_size: int, name: str) -> bytes:
    """``model`` as an ONNX model (jax2onnx), preprocessing inside, checked with onnxruntime
    against JAX's logits. ``ValueError`` naming ``name`` and the operation that fails."""
    try:
        import jax2onnx
        import onnxruntime
    except ImportError as error:
        raise ValueError(f"--format onnx needs jax2onnx and onnxruntime ({error.name} is "
                         f"missing): {INSTALL_ONNX}") from None
    for logger in ("jax2onnx", "onnx_ir"):   # plugins for libraries not installed, type notes
        logging.getLogger(logger).setLevel(logging.ERROR)
    fn = serving_fn(model, image_size, onnx_preprocess)
    version = importlib.metadata.version("jax2onnx")
    try:
        proto = jax2onnx.to_onnx(fn, inputs=[input_spec()], model_name=name,
                                 input_names=["images"], output_names=["logits"])
    except Exception as error:               # jax2onnx raises many kinds for what it lacks
        raise ValueError(f"jax2onnx {version} cannot export {name}: {_first_line(error)}"
                         ) from None
    serialized = proto.SerializeToString()
    images = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, *INPUT[1:]), np.uint8)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(serialized, options,
                                               providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images})[0]
    except Exception as error:               # onnxruntime's errors name the node and its op
        text = str(error)
        op = re.search(r"Op \((\w+)\)|running (\w+) node", text)
        what = f"its {next(g for g in op.groups() if g)} operation: " if op else ""
        raise ValueError(f"jax2onnx {version} exported {name}, but onnxruntime "
                         f"{onnxruntime.__version__} cannot run it, {what}"
                         f"{' '.join(text.split())[:300]}") from None
    # JAX's logits with data.preprocess, the weights an argument: as constants, XLA spends
    # seconds folding them (VGG-11: 9 s of compile).
    graphdef, state = nnx.split(model)
    want = np.asarray(jax.jit(lambda s, x: _eval_logits(graphdef, s, x, image_size,
                                                        data.preprocess))(state, images))
    error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    if not error <= ONNX_TOLERANCE:
        raise ValueError(f"the ONNX export of {name} gives other logits than JAX's: relative "
                         f"difference {error:.2e} > {ONNX_TOLERANCE:g}")
    return serialized


# ----------------------------------------------------------------------------------------------
# jaxcnn export
# ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxcnn export`` arguments, added to ``parser``."""
    parser.add_argument("workdir")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="stablehlo (jax.export, CPU and CUDA) or onnx (jax2onnx, checked "
                             "with onnxruntime; needs pip install -e '.[export]')")
    parser.add_argument("--output", required=True, metavar="PATH", help="the file to write")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="the workdir's checkpoint (default: best)")


def run(args: argparse.Namespace) -> int:
    """``jaxcnn export``: the workdir's model, preprocessing inside, to ``--output``."""
    from jaxcnn.interop import load_workdir

    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise ValueError(f"--output {args.output!r} must be a file path in an existing "
                         f"directory")
    model, cfg = load_workdir(args.workdir, args.which)
    if args.format == "stablehlo":
        blob = to_stablehlo(model, cfg.image_size)
    else:
        blob = to_onnx(model, cfg.image_size, cfg.model)
    output.write_bytes(blob)
    use = ("jax.export.deserialize(open(PATH, 'rb').read()).call(images)"
           if args.format == "stablehlo" else
           "onnxruntime.InferenceSession(PATH).run(None, {'images': images})")
    print(f"{cfg.model} {args.which} checkpoint of {args.workdir}: {args.format} "
          f"({len(blob) / 2**20:,.1f} MiB) to {output}; it takes uint8 images (N, 28, 28, 1) "
          f"and returns logits (N, 10): {use}")
    return 0
