"""jaxcnn.interop, export and predict: the book's PyTorch weights in and out of every registry
model (logits on real images, bit-for-bit round trips, a trained LeNet's test accuracy in
PyTorch), safetensors files and workdirs, StableHLO and ONNX artifacts, and predictions on
image files.

The PyTorch comparisons need torch (the ``bench`` extra) and skip without it; the ONNX ones need
jax2onnx and onnxruntime (the ``export`` extra). Models run at small image sizes (the registry's
``min_image_size`` or 32) on a few real Fashion-MNIST test images: every layer is the same as at
the book's size, only the first dense layer after a flatten is narrower.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from processes import run_python

from jaxcnn import cli, data, export, interop, models, predict, train
from jaxcnn.config import Config

SIZES = {name: spec.image_size if spec.image_size == 28 else max(32, spec.min_image_size)
         for name, spec in models.REGISTRY.items()}
IMAGES = 4                     # real test images per logits comparison
ONNX = (importlib.util.find_spec("jax2onnx") is not None
        and importlib.util.find_spec("onnxruntime") is not None)
ONNX_EXPORTS = ("lenet", "bn_lenet", "vgg", "vgg11")   # what jax2onnx 0.17.1 exports and
                                                        # onnxruntime 1.32 runs (README table)


@pytest.fixture(scope="module")
def torch_models():
    pytest.importorskip("torch", reason="the PyTorch comparisons need torch (pip install -e "
                                        "'.[bench]')")
    from jaxcnn import torch_models

    return torch_models


@pytest.fixture(scope="module")
def test_images():
    return data.fashion_mnist("test")


def random_torch_model(torch_models, name: str, seed: int = 1):
    """The book's PyTorch ``name`` at ``SIZES[name]`` with random weights (``init_cnn``) and
    random BatchNorm scales, shifts and running statistics; in eval mode."""
    torch = torch_models.torch
    model = torch_models.create(name, image_size=SIZES[name], seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def jax_logits(model: nnx.Module, images: np.ndarray, image_size: int) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(data.preprocess(
        x, image_size)))(state, images))


def torch_logits(torch_models, model, images: np.ndarray, image_size: int) -> np.ndarray:
    x = np.asarray(data.preprocess(images, image_size)).transpose(0, 3, 1, 2).copy()
    with torch_models.torch.no_grad():
        return model(torch_models.torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------------------------
# PyTorch state dicts <-> models
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_torch_weights_give_pytorch_logits_round_trip_and_export(torch_models, test_images,
                                                                 name):
    """PyTorch's random weights (BatchNorm statistics too) give PyTorch's eval-mode logits on
    real images and come back bit for bit; the model's StableHLO export gives its logits (not
    checked for the four largest, whose layers the others have: their weights become the
    artifact's constants, slow to compile)."""
    size = SIZES[name]
    reference = random_torch_model(torch_models, name)
    state_dict = reference.state_dict()
    model = interop.from_torch(name, state_dict, image_size=size)
    images = test_images[0][:IMAGES]
    want = torch_logits(torch_models, reference, images, size)
    got = jax_logits(model, images, size)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), name
    if name not in ("vgg", "vgg11", "alexnet", "resnet18"):
        exported = jax.export.deserialize(export.to_stablehlo(model, size))
        np.testing.assert_allclose(np.asarray(exported.call(images)), got, rtol=1e-6,
                                   atol=1e-6 * np.abs(got).max())
    back = interop.to_torch(model)
    assert set(back) == set(state_dict), name
    for key, value in state_dict.items():
        value = value.numpy()
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert back[key].tobytes() == value.tobytes(), key


def test_every_key_the_mapping_names_is_the_book_modules(torch_models):
    """The keys to_torch writes are exactly, and in order where PyTorch registers its children
    in the order they run, the ones the book's modules have."""
    for name in ("lenet", "vgg", "nin", "googlenet", "densenet", "bn_lenet_scratch"):
        keys = [e.key for e in interop.entries(nnx.eval_shape(
            lambda name=name: models.create(name, image_size=SIZES[name])))]
        assert keys == list(torch_models.create(name, image_size=SIZES[name]).state_dict()), name


def test_num_batches_tracked_is_ignored_in_and_zero_out(torch_models):
    state_dict = random_torch_model(torch_models, "bn_lenet").state_dict()
    for key in state_dict:
        if key.endswith("num_batches_tracked"):
            state_dict[key] = state_dict[key] + 7
    back = interop.to_torch(interop.from_torch("bn_lenet", state_dict))
    counters = [key for key in back if key.endswith("num_batches_tracked")]
    assert len(counters) == 4 and all(back[k].dtype == np.int64 and back[k] == 0
                                      for k in counters)
    without = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    interop.from_torch("bn_lenet", without)          # optional on the way in


def test_flatten_reorder_is_channels_first_to_channels_last():
    """The first dense layer's input rows: PyTorch's (c, h, w) column is jaxcnn's (h, w, c)
    row, for a LeNet whose flatten is 16 x 5 x 5."""
    model = interop.from_torch("lenet", {k: np.arange(np.prod(s), dtype=np.float32).reshape(s)
                                         for k, s in _shapes("lenet").items()})
    kernel = np.asarray(model.layers[7].kernel.get_value())          # (400, 120)
    c, h, w = 3, 1, 4
    assert kernel[(h * 5 + w) * 16 + c, 2] == 2 * 400 + c * 25 + h * 5 + w


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {e.key: e.torch_shape() for e in interop.entries(
        nnx.eval_shape(lambda: models.create(name)))}


def test_state_dicts_that_do_not_fit_name_the_first_difference():
    good = {k: np.zeros(s, np.float32) for k, s in _shapes("lenet").items()}
    missing = dict(good)
    del missing["3.weight"]
    with pytest.raises(ValueError, match=r"lacks '3.weight', which lenet expects with shape "
                                         r"\(16, 6, 5, 5\)"):
        interop.from_torch("lenet", missing)
    wrong = {**good, "7.weight": np.zeros((120, 256), np.float32)}
    with pytest.raises(ValueError, match=r"'7.weight' has shape \(120, 256\) in the state dict; "
                                         r"lenet expects \(120, 400\) .*image_size"):
        interop.from_torch("lenet", wrong)
    with pytest.raises(ValueError, match=r"holds 'extra.bias', which lenet does not have"):
        interop.from_torch("lenet", {**good, "extra.bias": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"lacks '0.0.weight', which resnet18 expects"):
        interop.from_torch("resnet18", good)
    with pytest.raises(ValueError, match="floating-point"):
        interop.from_torch("lenet", {**good, "0.bias": np.zeros(6, np.int64)})


# ----------------------------------------------------------------------------------------------
# A trained run: to PyTorch and back, StableHLO
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory):
    """The book's LeNet trained briefly (a reduced run: Adam, 128 steps of 64 on 8,192 images;
    about 0.64 test accuracy), in a workdir."""
    workdir = tmp_path_factory.mktemp("interop") / "lenet"
    cfg = Config(model="lenet", optimizer="adam", lr=0.003, batch_size=64, epochs=1,
                 train_examples=8192, test_examples=256, checkpoint_every=0)
    train.fit(cfg, workdir, log=lambda message: None)
    return workdir


def test_trained_lenet_in_pytorch_has_the_same_test_accuracy_to_the_image(
        torch_models, trained_lenet, tmp_path, capsys):
    from safetensors.torch import load_file

    path = tmp_path / "lenet.safetensors"
    assert cli.main(["convert", str(trained_lenet), "--to", str(path)]) == 0
    assert "10 tensors" in capsys.readouterr().out
    model = torch_models.create("lenet")
    model.load_state_dict(load_file(str(path)))
    images, labels = data.fashion_mnist("test")
    correct = round(torch_models.accuracy(model, torch_models.to_tensors(images, labels), 500)
                    * len(labels))
    ours = train.evaluate_workdir(trained_lenet)
    assert ours["test_examples"] == 10_000 and 0.5 < ours["test_acc"]   # it learned something
    assert correct == round(ours["test_acc"] * 10_000)


def test_pytorch_weights_into_a_workdir_that_eval_export_and_train_read(
        torch_models, test_images, tmp_path, capsys):
    """A 32 px LeNet's PyTorch weights -> safetensors -> `convert --from-torch` -> a workdir:
    `eval` reads it, load_model's logits are PyTorch's, and a StableHLO export deserialised in
    a fresh process (resizing 28 -> 32 inside) gives them too."""
    from safetensors.torch import save_file

    reference = torch_models.create("lenet", image_size=32, seed=3).eval()
    path, workdir = tmp_path / "lenet32.safetensors", tmp_path / "from-torch"
    save_file(reference.state_dict(), str(path))
    assert cli.main(["convert", str(path), "--from-torch", "--workdir", str(workdir)]) == 2
    assert "names no model" in capsys.readouterr().err
    assert cli.main(["convert", str(path), "--from-torch", "--model", "lenet",
                     "--workdir", str(workdir)]) == 2            # the flatten says 32 px
    assert "image_size" in capsys.readouterr().err and not workdir.exists()
    assert cli.main(["convert", str(path), "--from-torch", "--model", "lenet", "--image-size",
                     "32", "--workdir", str(workdir)]) == 0
    assert cli.main(["eval", str(workdir)]) == 0
    assert "epoch 0, step 0" in capsys.readouterr().out
    assert cli.main(["convert", str(path), "--from-torch", "--model", "lenet", "--image-size",
                     "32", "--workdir", str(workdir)]) == 2      # never over a workdir
    assert "not an empty directory" in capsys.readouterr().err

    images = test_images[0][:IMAGES]
    want = torch_logits(torch_models, reference, images, 32)
    model = train.load_model(workdir)
    got = jax_logits(model, images, 32)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()

    artifact = tmp_path / "lenet32.stablehlo"
    assert cli.main(["export", str(workdir), "--format", "stablehlo", "--output",
                     str(artifact)]) == 0
    np.save(tmp_path / "images.npy", np.concatenate([images, test_images[0][-3:]]))
    out = run_python(f"""
        import jax, numpy as np
        exported = jax.export.deserialize(open({str(artifact)!r}, "rb").read())
        images = np.load({str(tmp_path / "images.npy")!r})
        print(exported.in_avals, exported.platforms)
        np.save({str(tmp_path / "logits.npy")!r}, np.asarray(exported.call(images)))
        """, os.environ)
    assert "uint8[N,28,28,1]" in out and "'cuda'" in out              # any batch, CPU and GPU
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (IMAGES + 3, 10)
    np.testing.assert_allclose(logits[:IMAGES], got, rtol=1e-6, atol=1e-6 * np.abs(got).max())


def test_train_goes_on_from_the_weights_of_a_made_workdir(torch_models, tmp_path):
    """A workdir made from PyTorch weights resumes at epoch 0, step 0: `fit` trains these
    weights (at a learning rate too small to move them, they come back unchanged; a fresh run
    would have started from models.create's)."""
    cfg = Config(model="lenet", lr=1e-9, epochs=1, train_examples=256, test_examples=64,
                 checkpoint_every=0)
    model = interop.from_torch("lenet", torch_models.create("lenet", seed=5).state_dict())
    interop.make_workdir(tmp_path / "w", model, cfg, source="a test")
    assert len(train.fit(cfg, tmp_path / "w", log=lambda message: None)) == 1
    trained = nnx.state(train.load_model(tmp_path / "w", "latest"), nnx.Param)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(trained),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_workdir_weights_round_trip_through_safetensors(trained_lenet, tmp_path):
    path = tmp_path / "lenet.safetensors"
    assert cli.main(["convert", str(trained_lenet), "--to", str(path)]) == 0
    state_dict, metadata = interop.load_safetensors(path)
    assert metadata["jaxcnn_model"] == "lenet" and metadata["image_size"] == "28"
    assert state_dict.keys() == interop.to_torch(train.load_model(trained_lenet)).keys()
    back = tmp_path / "back"                            # --model from the file's metadata
    assert cli.main(["convert", str(path), "--from-torch", "--workdir", str(back)]) == 0
    for a, b in zip(jax.tree.leaves(nnx.state(train.load_model(trained_lenet), nnx.Param)),
                    jax.tree.leaves(nnx.state(train.load_model(back), nnx.Param)), strict=True):
        assert np.array_equal(a, b)


def test_convert_errors_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    cases = [["convert", str(garbage), "--from-torch", "--model", "lenet", "--workdir",
              str(tmp_path / "w")],
             ["convert", str(tmp_path / "missing.safetensors"), "--from-torch", "--workdir",
              str(tmp_path / "w")],
             ["convert", str(tmp_path), "--from-torch"],
             ["convert", str(tmp_path)],
             ["convert", str(tmp_path / "nowhere"), "--to", str(tmp_path / "x.safetensors")]]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("jaxcnn convert: error: ") and err.count("\n") == 1, err


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------

def test_onnx_preprocess_matches_data_preprocess(test_images):
    images = test_images[0][:16]
    for size in (28, 32, 96, 224):
        a = jax.jit(lambda x, size=size: data.preprocess(x, size))(images)
        b = jax.jit(lambda x, size=size: export.onnx_preprocess(x, size))(images)
        assert a.shape == b.shape and float(jnp.abs(a - b).max()) <= 1e-5, size


@pytest.mark.skipif(not ONNX, reason="needs jax2onnx and onnxruntime (the export extra)")
@pytest.mark.filterwarnings("ignore:'.value' access is now deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_onnx_export_matches_jax_or_names_the_model_and_operation(torch_models, test_images,
                                                                  name):
    import onnxruntime

    size = SIZES[name]
    model = interop.from_torch(name, random_torch_model(torch_models, name).state_dict(),
                               image_size=size)
    try:
        blob = export.to_onnx(model, size, name)
    except ValueError as error:
        assert name not in ONNX_EXPORTS, f"{name} no longer exports: {error}"
        assert f" {name}" in str(error) and ("operation" in str(error)
                                             or "cannot export" in str(error)), str(error)
        return
    assert name in ONNX_EXPORTS, f"{name} exports now: add it to the README's table"
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    images = np.concatenate([test_images[0][:IMAGES], test_images[0][-1:]])   # odd batch
    got = session.run(None, {"images": images})[0]
    want = jax_logits(model, images, size)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.skipif(not ONNX, reason="needs jax2onnx and onnxruntime (the export extra)")
@pytest.mark.filterwarnings("ignore:'.value' access is now deprecated:DeprecationWarning")
def test_onnx_export_command(trained_lenet, tmp_path, capsys):
    path = tmp_path / "lenet.onnx"
    assert cli.main(["export", str(trained_lenet), "--format", "onnx", "--output",
                     str(path)]) == 0
    assert path.stat().st_size > 200_000 and "onnxruntime" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# jaxcnn predict
# ----------------------------------------------------------------------------------------------

def photo(image: np.ndarray, path, scale: int = 5, margin: int = 40) -> None:
    """A Fashion-MNIST image as a user's photo: enlarged, on a light background with a margin,
    in colour (a shade of blue)."""
    light = 255 - image[:, :, 0]
    big = np.asarray(Image.fromarray(light).resize((28 * scale, 28 * scale),
                                                   Image.Resampling.NEAREST))
    canvas = np.full((28 * scale + 2 * margin, 28 * scale + margin), 255, np.uint8)
    canvas[margin:margin + 28 * scale, margin // 2:margin // 2 + 28 * scale] = big
    rgb = np.stack([canvas * 0.8, canvas * 0.9, canvas], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def test_fashion_image_recovers_fashion_mnist_images(test_images, tmp_path):
    images = test_images[0][:20]
    errors, dark_errors = [], []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        photo(image, path)
        made, inverted = predict.fashion_image(path)
        assert made.shape == (28, 28, 1) and made.dtype == np.uint8 and inverted
        errors.append(np.abs(made.astype(int) - image.astype(int)).mean())
        Image.fromarray(image[:, :, 0]).save(tmp_path / f"{i}-dark.png")   # already dark
        dark, inverted = predict.fashion_image(tmp_path / f"{i}-dark.png")
        assert not inverted
        dark_errors.append(np.abs(dark.astype(int) - image.astype(int)).mean())
    # Pixel values are 0-255; a mean error of a few grey levels is resampling's.
    assert np.median(errors) < 8 and np.median(dark_errors) < 1, (errors, dark_errors)


def test_predict_prints_top_3_and_json(trained_lenet, test_images, tmp_path, capsys):
    images = test_images[0]
    paths = []
    for i in range(16):
        paths.append(tmp_path / f"photo{i}.{'jpg' if i % 2 else 'png'}")
        photo(images[i], paths[-1])
    assert cli.main(["predict", str(trained_lenet), *map(str, paths), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "lenet" and len(result["predictions"]) == 16
    model = train.load_model(trained_lenet)
    originals = predict.predict(model, images[:16], 28).argmax(-1)
    agree = 0
    for entry, original in zip(result["predictions"], originals, strict=True):
        top = entry["top"]
        assert entry["inverted"] and len(top) == 3
        assert [t["class"] for t in top][0] in data.CLASS_NAMES
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"] > 0
        agree += top[0]["class"] == data.CLASS_NAMES[original]
    # The photos are the test images, enlarged and made 28 x 28 again: 0.98 (PNG) and 0.95
    # (JPEG) of the first 100 got the originals' class from this LeNet.
    assert agree >= 14, agree
    assert cli.main(["predict", str(trained_lenet), str(paths[0])]) == 0
    line = capsys.readouterr().out.strip()
    top = ", ".join(rf"{t['class']} {t['probability']:.3f}" for t in
                    result["predictions"][0]["top"])
    assert re.fullmatch(rf"{re.escape(str(paths[0]))}: {top} \(light background: inverted.*\)",
                        line), line


def test_predict_names_an_unreadable_image(trained_lenet, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert cli.main(["predict", str(trained_lenet), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read image" in err and str(bad) in err
    assert cli.main(["predict", str(trained_lenet), str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
