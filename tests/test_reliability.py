"""Nothing lost on a kill, damaged checkpoints skipped, divergence stopped, bad input explained."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn import cli, data, report, train
from jaxcnn.checkpoints import Checkpoints, abstract
from jaxcnn.config import Config

# Two epochs of LeNet at batch 256 on a sixth of the training images (40 steps an epoch), a
# checkpoint every 16 steps; as one run, and as a group of two seeds.
KILL_ARGS = ["train", "lenet", "--epochs", "2", "--batch-size", "256", "--checkpoint-every", "16",
             "--train-examples", "10240", "--test-examples", "2000"]
KILL_CONFIG = Config(model="lenet", epochs=2, batch_size=256, checkpoint_every=16,
                     train_examples=10_240, test_examples=2_000)
COMPARED = ("epoch", "train_loss", "val_loss", "val_acc")
GROUP = ["--seeds", "0,1"]


def start(workdir: Path, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxcnn", *KILL_ARGS, *extra, "--workdir",
                             str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0, poll: float = 0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"run ended before the kill point:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(poll)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def saving(runs: list[Path]) -> bool:
    """An Orbax save in progress: a temporary checkpoint directory exists."""
    return any("tmp" in p.name for run in runs for sub in ("latest", "best")
               for p in (run / "checkpoints" / sub).glob("*"))


def has_checkpoint(runs: list[Path]) -> bool:
    return any(p.name.isdigit() for run in runs
               for p in (run / "checkpoints" / "latest").glob("*"))


def final_state(workdir: Path, seed: int):
    cfg = dataclasses.replace(KILL_CONFIG, seed=seed)
    trainer = train.Trainer(cfg, data.num_batches(10_240, 256, train=True))
    checkpoints = Checkpoints(workdir / "checkpoints", writable=False)
    try:
        return checkpoints.restore(abstract(trainer.initial_state))
    finally:
        checkpoints.close()


@pytest.mark.parametrize("extra", [[], GROUP], ids=["one-seed", "two-seeds"])
def test_kill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, extra):
    # The uninterrupted reference runs beside the killed one (on the other core, mostly).
    reference = start(tmp_path / "reference", extra)
    folders = ["seed-0", "seed-1"] if extra else ["."]
    workdir = tmp_path / "killed"
    runs = [workdir / f for f in folders]
    rng = random.Random(20261128)
    # 1: somewhere in the first epoch after a checkpoint exists.
    process = start(workdir, extra)
    wait_for(lambda: has_checkpoint(runs), process)
    time.sleep(rng.uniform(0.0, 0.4))
    kill(process)
    # 2: inside a checkpoint save (Orbax's temporary directory is on disk).
    process = start(workdir, extra)
    wait_for(lambda: saving(runs), process, poll=0.0005)
    kill(process)
    # 3: once the first epoch's metrics are written (second epoch, its evaluation or a save).
    process = start(workdir, extra)
    wait_for(lambda: all((run / "metrics.jsonl").exists() and len(report.read_metrics(run)) >= 1
                         for run in runs), process)
    time.sleep(rng.uniform(0.0, 0.8))
    kill(process)
    # Resume to the end.
    process = start(workdir, extra)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "resuming" in output
    reference_output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_output

    for folder, seed in zip(folders, (0, 1), strict=False):
        want = [{k: r[k] for k in COMPARED}
                for r in report.read_metrics(tmp_path / "reference" / folder)]
        got = [{k: r[k] for k in COMPARED} for r in report.read_metrics(workdir / folder)]
        assert got == want
        (state_a, meta_a), (state_b, meta_b) = (final_state(tmp_path / "reference" / folder, seed),
                                                final_state(workdir / folder, seed))
        assert int(state_a["step"]) == int(state_b["step"]) == 2 * 40
        for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # bitwise
        assert meta_a["digest"] == meta_b["digest"]
    if extra:
        assert (json.loads((workdir / "summary.json").read_text())
                == json.loads((tmp_path / "reference" / "summary.json").read_text()))


def corrupt_arrays(step_dir: Path) -> None:
    """Flip bytes in the middle of every array data file of one checkpoint."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 64
             and "metadata" not in p.name]
    assert files, list((step_dir / "state").rglob("*"))
    for path in files:
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 16):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))


def test_a_corrupted_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
    # 50 steps, a checkpoint every 20: latest keeps 40 and 50.
    cfg = Config(model="lenet", epochs=1, batch_size=256, checkpoint_every=20,
                 train_examples=12_800, test_examples=2_000)
    straight = train.fit(cfg, tmp_path / "straight", log=lambda s: None)
    workdir = tmp_path / "damaged"
    train.fit(cfg, workdir, log=lambda s: None)
    latest = workdir / "checkpoints" / "latest"
    assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [40, 50]
    corrupt_arrays(latest / "50")
    # Resuming falls back to step 40 (mid-epoch) and redoes the rest of the epoch.
    messages = []
    resumed = train.fit(cfg, workdir, log=messages.append)
    err = capsys.readouterr().err
    assert "50 is unreadable" in err and "trying an older one" in err
    assert "step 40" in messages[0]
    assert [r["val_acc"] for r in resumed] == [r["val_acc"] for r in straight]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]


def test_divergence_stops_with_the_step_and_stays_resumable(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    small = ["--train-examples", "5120", "--test-examples", "1000"]
    assert cli.main(["train", "lenet", "--lr", "1e6", "--epochs", "1", *small,
                     "--workdir", workdir]) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "at step" in err and "with a lower --lr" in err
    assert len(err.strip().splitlines()) == 1                 # one line, no traceback
    # The same workdir, with a lower learning rate, trains on.
    assert cli.main(["train", "lenet", "--lr", "0.1", "--epochs", "1", "--batch-size", "128",
                     *small, "--workdir", workdir]) == 0


# ----------------------------------------------------------------------------------------------
# Bad input: one line, the same message from the library
# ----------------------------------------------------------------------------------------------

def cli_error(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["train", "alexnetz"], "unknown model 'alexnetz'; known models: lenet"),
    (["train", "lenet", "--epochs", "0"], "error: --epochs must be a positive integer, got 0"),
    (["train", "lenet", "--epochs", "-2"], "error: --epochs must be a positive integer, got -2"),
    (["train", "lenet", "--epochs", "20000"], "error: --epochs must be at most 10,000"),
    (["train", "lenet", "--batch-size", "0"], "error: --batch-size must be a positive integer, "
                                              "got 0"),
    (["train", "lenet", "--lr", "0"], "error: --lr must be a positive number, got 0.0"),
    (["train", "lenet", "--lr", "-0.1"], "error: --lr must be a positive number, got -0.1"),
    (["train", "vgg", "--image-size", "16"], "error: --image-size 16 is too small for vgg: it "
                                             "needs at least 32"),
    (["summary", "resnet9"], "unknown model 'resnet9'"),
    (["train", "lenet", "--seed", "-1"], "error: --seed must be a non-negative integer, got -1"),
    (["train", "lenet", "--val-examples", "60000"], "error: --val-examples 60,000 leaves none "
                                                    "of the 60,000 training images"),
    (["train", "lenet", "--coordinator", "nohostport", "--num-processes", "1", "--process-id",
      "0"], "--coordinator (or JAX_COORDINATOR_ADDRESS) must be HOST:PORT, e.g. 10.0.0.1:1234; "
            "got 'nohostport'"),
    (["train", "lenet", "--coordinator", "127.0.0.1:1234", "--num-processes", "0"],
     "--num-processes (or JAX_NUM_PROCESSES) must be a positive integer, or -1"),
    (["train", "lenet", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
      "--process-id", "2"], "--process-id (or JAX_PROCESS_ID) must be a non-negative integer "
                            "below --num-processes 2; got 2"),
    (["train", "lenet", "--process-id", "-1"], "--process-id (or JAX_PROCESS_ID) must be a "
                                               "non-negative integer; got -1"),
])
def test_bad_arguments(capsys, argv, message):
    assert message in cli_error(capsys, *argv)


def test_library_errors_name_the_librarys_settings():
    with pytest.raises(ValueError, match="^epochs must be a positive integer, got 0"):
        Config(model="lenet", epochs=0)
    with pytest.raises(ValueError, match="^image_size 16 is too small for vgg"):
        Config(model="vgg", image_size=16)



def test_library_divergence_names_the_arguments_not_the_flags(tmp_path):
    cfg = Config(model="lenet", lr=1e6, epochs=1, train_examples=1024, checkpoint_every=0)
    with pytest.raises(train.DivergenceError) as caught:
        train.fit(cfg, tmp_path, log=lambda s: None)
    message = str(caught.value)
    assert "with a lower lr (now 1e+06)" in message and "(force_new=True starts over)" in message
    assert "--" not in message


def test_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = cli_error(capsys, "train", "lenet", "--workdir", str(blocker / "run"))
    assert "is not writable" in err and "a-file/run" in err
    err = cli_error(capsys, "train", "lenet", "--workdir", str(blocker))
    assert err.endswith(f"workdir {str(blocker)!r} is a file, not a directory")


def test_a_corrupt_config_names_its_file(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for text, problem in [("{bad", "Expecting property name"),
                          ("[]", "a config is a JSON object of fields; got list")]:
        (run / "config.json").write_text(text)
        for argv in (["eval", str(run)], ["train", "lenet", "--workdir", str(run)]):
            err = cli_error(capsys, *argv)
            assert f"{str(run / 'config.json')!r} is not a valid jaxcnn config: {problem}" in err


def test_more_examples_than_the_split_holds_is_refused_before_the_workdir_is_touched(
        tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "lenet", "--epochs", "1", "--train-examples", "256",
                     "--test-examples", "256", "--workdir", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for flag, count, split in [("--train-examples", "70000", "60,000 images of the training"),
                               ("--test-examples", "10001", "10,000 images of the test")]:
        err = cli_error(capsys, "train", "lenet", flag, count, "--force-new", "--workdir",
                        str(run))
        assert err.endswith(f"{flag} {int(count):,} is more than the {split} split")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_partial_multi_process_description_is_left_for_jax_to_complete(tmp_path):
    # JAX takes what is missing from a cluster it detects (SLURM, Open MPI, ...); on a plain
    # machine it says what is missing. (A child process: JAX's distributed state is global.)
    result = subprocess.run([sys.executable, "-m", "jaxcnn", "train", "lenet", "--coordinator",
                             "127.0.0.1:1234", "--workdir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("jaxcnn train: error: ") and "defined" in err and "--" not in err


@pytest.fixture
def fresh_tfds(tmp_path, monkeypatch):
    """An empty tfds data dir, so the sources are read (not the prepared cache)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    source = Path(os.environ.get(data.ENV_VAR, data.DEBIAN_DIR))
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    return copy


def test_missing_data_dir(tmp_path, capsys):
    err = cli_error(capsys, "train", "lenet", "--data-dir", str(tmp_path / "nowhere"),
                    "--workdir", str(tmp_path / "run"))
    assert "nowhere does not exist" in err and "dataset-fashion-mnist" in err


def test_incomplete_data_dir(fresh_tfds, tmp_path, capsys):
    (fresh_tfds / "t10k-labels-idx1-ubyte.gz").unlink()
    err = cli_error(capsys, "train", "lenet", "--data-dir", str(fresh_tfds),
                    "--workdir", str(tmp_path / "run"))
    assert "t10k-labels-idx1-ubyte.gz: not found in" in err


def test_corrupt_data_dir(fresh_tfds, tmp_path, capsys):
    path = fresh_tfds / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[5000] ^= 0x01
    path.write_bytes(gzip.compress(bytes(raw)))
    err = cli_error(capsys, "train", "lenet", "--data-dir", str(fresh_tfds),
                    "--workdir", str(tmp_path / "run"))
    assert "t10k-images-idx3-ubyte.gz" in err and "SHA-256" in err


@pytest.mark.parametrize("name, size", [("lenet", 28), ("resnet18", 32)])
def test_nchw_input_is_explained(name, size):
    from jaxcnn import models

    model = models.create(name, image_size=size)
    with pytest.raises(ValueError, match=r"expected NHWC input .*got shape \(2, 1, "
                                         rf"{size}, {size}\); it looks like NCHW"):
        model(np.zeros((2, 1, size, size), np.float32))
    with pytest.raises(ValueError, match=r"expected NHWC input .*got shape \(2, 28, 28\)"):
        model(np.zeros((2, 28, 28), np.float32))


# The check is the dense layer's (layers.Linear), so two of the flattening models show it.
@pytest.mark.parametrize("name, built, given", [("lenet", 28, 32), ("bn_lenet", 28, 20)])
def test_images_of_another_size_are_explained(name, built, given):
    from jaxcnn import models

    model = models.create(name, image_size=built)
    model.eval()
    with pytest.raises(ValueError, match=r"a dense layer expected \(batch, \d+\) features; got "
                                         r"shape \(1, \d+\)\. .*models\.create\(name, "
                                         r"image_size=\.\.\.\)"):
        model(np.zeros((1, given, given, 1), np.float32))


def test_integer_images_are_explained():
    from jaxcnn import models

    model = models.create("lenet")
    with pytest.raises(TypeError, match="expected floating-point NHWC images .* got dtype uint8"):
        model(np.zeros((2, 28, 28, 1), np.uint8))
