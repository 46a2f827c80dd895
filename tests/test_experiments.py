"""The experiment scripts run end to end: chapter 7's check their own values against the
book's; chapter 8's print the summary and train with the book's recipe (cut short here). They
are jupytext percent-format notebooks too, and two of them run as notebooks here."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from jaxcnn import models

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("script", ["conv_layer", "padding_strides", "channels", "pooling",
                                    "exercises"])
def test_chapter7_script(script):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / f"{script}.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# One step of each model: the scripts' own work is the summary, the recipe and the run's files.
SHORT = ["--epochs", "1", "--train-examples", "128", "--test-examples", "256",
         "--checkpoint-every", "0"]


@pytest.mark.parametrize("script, names", [("lenet", ["lenet"]),
                                           ("batch_norm", ["bn_lenet_scratch", "bn_lenet"])])
def test_chapter8_script_summarises_and_trains_with_the_book_recipe(script, names, tmp_path):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / f"{script}.py"), *SHORT],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\nTotal ") == len(names), result.stdout
    for name in names:
        workdir = tmp_path / "runs" / f"{name}-book"
        saved = json.loads((workdir / "config.json").read_text())
        assert saved["model"] == name and saved["recipe"] == "book", saved
        assert (workdir / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("flag", ["--help", "--he", "-h"])   # argparse takes abbreviations
def test_a_chapter8_script_explains_itself_without_training(flag, tmp_path):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / "batch_norm.py"), flag],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("d2l 8.5 -- LeNet with batch normalization")
    assert "this script trains bn_lenet_scratch and bn_lenet" in result.stdout
    assert "Total " not in result.stdout and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", [["--workdir=both"], ["--work", "both"]])
def test_two_models_refuse_one_workdir(flag, tmp_path):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / "batch_norm.py"), *flag, *SHORT],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "--workdir is not taken here" in result.stderr
    assert not (tmp_path / "both").exists() and not (tmp_path / "runs").exists()


def test_every_chapter8_script_names_registered_models():
    scripts = [p for p in EXPERIMENTS.glob("*.py") if "reproduce(" in p.read_text()
               and p.name != "common.py"]
    assert len(scripts) == 9, scripts
    for script in scripts:
        (call,) = re.findall(r"reproduce\(([^)]*)\)", script.read_text())
        names = re.findall(r'"([^"]+)"', call)
        assert names and all(name in models.REGISTRY for name in names), (script.name, names)


# Not notebooks: the PyTorch reference models, their training loop and the profiler.
NOT_NOTEBOOKS = {"common.py", "torch_reference.py", "torch_train.py", "profile_step.py"}


def test_every_experiment_script_is_a_percent_format_notebook():
    jupytext = pytest.importorskip("jupytext", reason="jupytext is in the dev extra")
    scripts = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name not in NOT_NOTEBOOKS)
    assert len(scripts) >= 14, scripts
    for script in scripts:
        assert script.read_text().startswith("# %%"), script.name
        notebook = jupytext.read(script)
        assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
        assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 2, script.name


def _outputs(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)


@pytest.mark.parametrize("script, values", [
    ("conv_layer", ["corr2d(X, K):\n[[19. 25.]\n [37. 43.]]",
                    "[[ 0.  1.  0.  0.  0. -1.  0.]\n [ 0.  1.  0.  0.  0. -1.  0.]"]),
    ("pooling", ["pool2d(X, (2, 2)):\n[[4. 5.]\n [7. 8.]]",
                 "pool2d(X, (2, 2), 'avg'):\n[[2. 3.]\n [5. 6.]]", "max_pool2d(X, 3):\n[[10.]]",
                 "max_pool2d(X, 3, padding=1, stride=2):\n[[ 5.  7.]\n [13. 15.]]",
                 "[[[ 5.  7.]\n  [13. 15.]]\n\n [[ 6.  8.]\n  [14. 16.]]]"]),
])
def test_chapter7_notebooks_show_the_books_values(script, values):
    jupytext = pytest.importorskip("jupytext", reason="jupytext is in the dev extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    notebook = jupytext.read(EXPERIMENTS / f"{script}.py")
    assert any(cell.cell_type == "markdown" and cell.source.startswith("# d2l 7.")
               for cell in notebook.cells)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(EXPERIMENTS)}}).execute()
    text = _outputs(notebook)
    for value in values:
        assert value in text, (value, text)
    if script == "conv_layer":           # the book learns [[1.0027, -0.9661]]
        (learned,) = re.findall(r"learned kernel.*:\n\[\[ *(\S+) +(\S+) *\]\]", text)
        assert abs(float(learned[0]) - 1) < 0.1 and abs(float(learned[1]) + 1) < 0.1, learned


def test_the_profile_tool_accounts_for_the_whole_step(tmp_path):
    """experiments/profile_step.py: every kind of op gets a row, the shares add up to the
    profiled step, and the largest ops are named with their kinds (a small LeNet step)."""
    result = subprocess.run([sys.executable, str(EXPERIMENTS / "profile_step.py"), "lenet",
                             "--steps", "1", "--batch-size", "32", "--top", "3",
                             "--hlo-dir", str(tmp_path / "hlo")],        # made by the tool
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    step = float(re.search(r"profiled step ([\d.]+) ms", out).group(1))
    rows = dict(re.findall(r"^\| ([a-z +()]+?) \| [\d.]+ \| ([\d.]+)% \|$", out, re.M))
    assert {"conv forward", "conv input grad", "conv weight grad",
            "idle (no op running)"} <= set(rows)
    assert sum(float(share) for share in rows.values()) == pytest.approx(100, abs=1)
    assert step > 0 and (tmp_path / "hlo" / "lenet-28.hlo.txt").stat().st_size > 1000
    largest = out.split("largest 3 ops:")[1].strip().splitlines()
    assert len(largest) == 3 and all(re.match(r"\s*[\d.]+ ms  \S", line) for line in largest)
