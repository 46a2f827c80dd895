"""``jaxcnn predict WORKDIR IMAGE...``: a trained model's top classes for the user's own images.

Each image (PNG, JPEG or anything else Pillow reads; any size, colour or grey) is made into a
Fashion-MNIST image the way Zalando made theirs from product photos (Xiao et al. 2017, sec. 2):
converted to 8-bit grey, its border trimmed where it is within 5 % of the background's
brightness, the longer side resized to 28 pixels (here with a Lanczos filter; they subsampled,
then sharpened), centred on a 28 x 28 canvas of the background's grey, and negated, so that
the garment is light on a black background. An image whose background is already dark is not
negated; the background is the median brightness of the image's outermost pixels, and one
above the middle grey counts as light (the command says when it inverted). The grey levels are
then stretched so that the background is 0, as in Fashion-MNIST (whose photos had white
backgrounds), and the opposite extreme 255.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, interop

SIDE = 28                 # Fashion-MNIST's images are 28 x 28
TRIM_THRESHOLD = 0.05     # a border within 5 % of the background's brightness is trimmed
TOP = 3                   # classes printed per image


def fashion_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """``(uint8 (28, 28, 1) image, inverted)`` from the picture at ``path`` (see the module's
    docstring); ``ValueError`` naming the file when Pillow cannot read it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = ImageOps.exif_transpose(image).convert("L")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    pixels = np.asarray(grey, np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    rows, cols = np.nonzero(np.abs(pixels - background) > TRIM_THRESHOLD * 255)
    if rows.size:                                  # not a blank image: trim the border
        grey = grey.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1,
                          int(rows.max()) + 1))
    scale = SIDE / max(grey.size)
    size = tuple(max(1, round(side * scale)) for side in grey.size)
    canvas = Image.new("L", (SIDE, SIDE), round(background))
    canvas.paste(grey.resize(size, Image.Resampling.LANCZOS),
                 ((SIDE - size[0] + 1) // 2, (SIDE - size[1] + 1) // 2))   # odd: as theirs
    result = np.asarray(canvas, np.float32)
    inverted = background > 127.5
    if inverted:                     # the background -> 0 and black -> 255
        result = (background - result) / background * 255
    else:                            # the background -> 0 and white -> 255
        result = (result - background) / (255 - background) * 255
    return np.clip(np.round(result), 0, 255).astype(np.uint8)[:, :, None], inverted


def top_classes(probabilities: np.ndarray, k: int = TOP) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of a ``(10,)`` softmax: ``[{"class", "probability"}]``."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": data.CLASS_NAMES[i], "probability": float(probabilities[i])}
            for i in order]


def predict(model: nnx.Module, images: np.ndarray, image_size: int) -> np.ndarray:
    """Softmax probabilities ``(N, 10)`` of ``model`` (eval mode) on uint8 images
    ``(N, 28, 28, 1)``, preprocessed as in training."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, images):
        logits = nnx.merge(graphdef, state)(data.preprocess(images, image_size))
        return jax.nn.softmax(logits.astype(jnp.float32))

    return np.asarray(apply(state, images))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxcnn predict`` arguments, added to ``parser``."""
    parser.add_argument("workdir")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="PNG or JPEG files, any size, colour or grey")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="the workdir's checkpoint (default: best)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """``jaxcnn predict``: the top 3 classes of each image, with their probabilities."""
    prepared = [fashion_image(path) for path in args.images]   # unreadable files fail first
    model, cfg = interop.load_workdir(args.workdir, args.which)
    probabilities = predict(model, np.stack([image for image, _ in prepared]), cfg.image_size)
    results = [{"image": str(path), "inverted": inverted, "top": top_classes(p)}
               for path, (_, inverted), p in zip(args.images, prepared, probabilities,
                                                 strict=True)]
    if args.json:
        print(json.dumps({"model": cfg.model, "which": args.which, "predictions": results},
                         indent=2))
        return 0
    for result in results:
        note = " (light background: inverted, as Fashion-MNIST's are dark)" \
            if result["inverted"] else ""
        ranked = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
        print(f"{result['image']}: {ranked}{note}")
    return 0
