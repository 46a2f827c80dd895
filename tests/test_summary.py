"""layer_summary: the book's output shapes (NHWC here), parameters, multiply-adds; the CLI."""

from __future__ import annotations

import pytest
from flax import nnx

from jaxcnn import cli, models, summary
from jaxcnn.summary import LayerRow


def shapes(rows: list[LayerRow]) -> list[tuple[int, ...]]:
    return [r.output_shape for r in rows[:-1]]


def test_lenet_table():
    rows = summary.layer_summary(models.create("lenet"), (1, 28, 28, 1), print_fn=None)
    assert shapes(rows) == [(1, 28, 28, 6), (1, 28, 28, 6), (1, 14, 14, 6), (1, 10, 10, 16),
                            (1, 10, 10, 16), (1, 5, 5, 16), (1, 400), (1, 120), (1, 120),
                            (1, 84), (1, 84), (1, 10)]
    assert [r.name for r in rows[:4]] == ["Conv", "sigmoid", "AvgPool2d", "Conv"]
    assert rows[-1] == LayerRow("Total", (1, 10), 61_706, rows[-1].macs)
    # Conv 1: 28*28*6 outputs x 5*5*1 inputs each; conv 2: 10*10*16 x 5*5*6; dense: in x out.
    expected_macs = [28 * 28 * 6 * 25, 0, 0, 10 * 10 * 16 * 150, 0, 0, 0, 400 * 120, 0,
                     120 * 84, 0, 84 * 10]
    assert [r.macs for r in rows[:-1]] == expected_macs
    assert rows[-1].macs == sum(expected_macs)


def test_vgg_full_table():
    # Shapes only, as `jaxcnn summary` builds it (drawing VGG-11's 129 million values eagerly
    # took 7 s and tells the table nothing).
    model = nnx.eval_shape(lambda: models.create("vgg11"))
    rows = summary.layer_summary(model, (1, 224, 224, 1), print_fn=None)
    assert shapes(rows) == [(1, 112, 112, 64), (1, 56, 56, 128), (1, 28, 28, 256),
                            (1, 14, 14, 512), (1, 7, 7, 512), (1, 25088)] + [(1, 4096)] * 6 \
        + [(1, 10)]
    assert rows[-1].params == 128_806_154


def test_resnet18_table():
    rows = summary.layer_summary(models.create("resnet18"), (1, 96, 96, 1), print_fn=None)
    assert shapes(rows) == [(1, 24, 24, 64), (1, 24, 24, 64), (1, 12, 12, 128), (1, 6, 6, 256),
                            (1, 3, 3, 512), (1, 10)]
    assert rows[-1].params == 11_178_378
    # The stem conv alone: 48*48*64 outputs x 7*7 inputs each.
    assert rows[0].macs == 48 * 48 * 64 * 49


def test_summary_does_not_change_the_model_mode():
    model = models.create("resnet18", image_size=32)
    model.train()
    summary.layer_summary(model, (1, 32, 32, 1), print_fn=None)
    bn = model.layers[0].layers[1]
    assert bn.use_running_average is False


def test_summary_of_a_single_block():
    block = models.Residual(6, use_1x1conv=True, strides=2, in_channels=3,
                            rngs=nnx.Rngs(0))
    rows = summary.layer_summary(block, (4, 6, 6, 3), print_fn=None)
    assert rows[0].output_shape == (4, 3, 3, 6) and rows[0].name == "Residual"


@pytest.mark.parametrize("name", ["lenet", "vgg", "vgg11", "resnet18", "resnext"])
def test_cli_summary_prints_the_table(name, capsys):
    assert cli.main(["summary", name]) == 0
    out = capsys.readouterr().out
    assert "output shape" in out and "Total" in out and "(1, 10)" in out


def test_cli_summary_input_shape_and_errors(capsys):
    assert cli.main(["summary", "lenet", "--input-shape", "2,32,32,3"]) == 0
    assert "(2, 32, 32, 6)" in capsys.readouterr().out
    assert cli.main(["summary", "vgg", "--input-shape", "1,16,16,1"]) == 2
    assert "too small for vgg" in capsys.readouterr().err
    assert cli.main(["summary", "nope"]) == 2
    assert "known models: lenet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["summary", "lenet", "--input-shape", "1,28,28"])


@pytest.mark.parametrize("shape", [(1, 28.0, 28, 1), (1, -28, 28, 1), 28, (28, 28, 1)])
def test_bad_input_shapes_are_explained(shape):
    with pytest.raises(ValueError, match=r"input_shape as four positive ints \(N, H, W, C\)"):
        summary.layer_summary(models.create("lenet"), shape, print_fn=None)


@pytest.mark.parametrize("model", ["lenet", None, models.LeNet, [models.create("lenet")]],
                         ids=["name", "none", "class", "list"])
def test_a_non_module_is_explained(model):
    with pytest.raises(TypeError, match=r"layer_summary expects an nnx.Module \(e.g. "
                                        r"models.create\('lenet'\)\); got "):
        summary.layer_summary(model, (1, 28, 28, 1), print_fn=None)
