"""Nothing lost and nothing mixed up in a workdir: checkpoints that repair themselves, the
config tied to them, one run at a time, a validation split that picks the best checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn import cli, config, report, train
from jaxcnn.checkpoints import CheckpointMismatchError

SMALL = ["--epochs", "1", "--train-examples", "512", "--test-examples", "256",
         "--checkpoint-every", "0", "--batch-size", "128"]       # 4 steps an epoch


def cfg(**overrides) -> config.Config:
    values = dict(epochs=1, batch_size=128, train_examples=512, test_examples=256,
                  checkpoint_every=0)
    return config.recipe("lenet", **{**values, **overrides})


def steps(workdir: Path, which: str = "latest") -> list[str]:
    return sorted((p.name for p in (workdir / "checkpoints" / which).iterdir()), key=int)


def run(workdir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["train", "lenet", *SMALL, "--workdir", str(workdir), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_stray_step_folder_is_moved_aside_once_and_never_evicts_checkpoints(tmp_path, capsys):
    assert run(tmp_path, capsys, "--epochs", "1")[0] == 0
    (tmp_path / "checkpoints" / "latest" / "99").mkdir()
    code, _, err = run(tmp_path, capsys, "--epochs", "2")
    assert code == 0 and "not an Orbax checkpoint" in err
    assert steps(tmp_path) == ["4", "8"]                    # step 8 kept, 99 moved aside
    assert (tmp_path / "checkpoints" / "ignored" / "latest-99").is_dir()
    code, out, err = run(tmp_path, capsys, "--epochs", "2")
    assert code == 0 and "nothing to train" in out and "warning" not in err   # reported once


def test_a_damaged_latest_checkpoint_is_replaced_by_the_retrained_one(tmp_path, capsys):
    assert run(tmp_path, capsys, "--epochs", "2")[0] == 0
    straight = report.read_metrics(tmp_path)
    for path in (tmp_path / "checkpoints/latest/8/state").rglob("*"):
        if path.is_file() and path.parent.name == "d":    # the arrays' data files
            with open(path, "r+b") as f:
                f.truncate(10)
    code, out, err = run(tmp_path, capsys, "--epochs", "2")
    damaged = str(tmp_path / "checkpoints" / "latest" / "8" / "state")
    assert code == 0 and re.search(rf"\w+ in {re.escape(damaged)}\S* is damaged", err), err
    assert "Traceback" not in err
    assert "resuming" in out and "epoch 2" in out
    assert steps(tmp_path) == ["4", "8"]
    assert [r["val_acc"] for r in report.read_metrics(tmp_path)] == \
        [r["val_acc"] for r in straight]
    code, out, err = run(tmp_path, capsys, "--epochs", "2")   # repaired: nothing to redo
    assert code == 0 and "nothing to train" in out and "warning" not in err


def test_without_latest_the_run_starts_over_and_the_old_best_goes(tmp_path, capsys):
    assert run(tmp_path, capsys)[0] == 0
    old = train.load_model(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "latest")
    code, out, err = run(tmp_path, capsys, "--lr", "0.5", "--seed", "3", "--force-new")
    assert code == 0      # --force-new: a clean slate, nothing said
    shutil.rmtree(tmp_path / "checkpoints" / "latest")
    code, out, err = run(tmp_path, capsys, "--lr", "0.9", "--seed", "3")
    assert code == 0 and "starting the run over" in out and "earlier run" in err
    rows = report.read_metrics(tmp_path)
    assert [r["lr"] for r in rows] == [0.9]
    new, latest = train.load_model(tmp_path), train.load_model(tmp_path, "latest")
    for a, b, c in zip(*(jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (new, latest, old)),
                       strict=True):
        np.testing.assert_array_equal(a, b)                  # best is the new run's epoch 1
        assert not np.array_equal(a, c)                      # not the old run's


def test_a_damaged_best_checkpoint_is_saved_again_from_latest(tmp_path, capsys):
    assert run(tmp_path, capsys)[0] == 0
    before = train.evaluate_workdir(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "best" / "4" / "state")
    with pytest.raises(ValueError, match="no readable checkpoint in .*best.*which='latest'"):
        train.evaluate_workdir(tmp_path)
    code, out, err = run(tmp_path, capsys)
    assert code == 0 and "nothing to train" in out and "saved it again" in err
    assert train.evaluate_workdir(tmp_path) == before


def test_a_lost_best_that_cannot_be_rebuilt_is_forgotten_and_chosen_again(tmp_path, capsys):
    every2 = ["--epochs", "2", "--checkpoint-every", "2"]
    assert run(tmp_path, capsys, *every2)[0] == 0
    assert steps(tmp_path) == ["6", "8"]
    shutil.rmtree(tmp_path / "checkpoints" / "best")
    shutil.rmtree(tmp_path / "checkpoints" / "latest" / "8")   # resume at 6: best was step 4
    code, out, err = run(tmp_path, capsys, *every2)
    assert code == 0 and "cannot be rebuilt" in err and "resuming" in out
    assert steps(tmp_path, "best") == ["8"]                  # epoch 2 is the best of the rest


def test_config_json_is_tied_to_the_checkpoints(tmp_path, capsys):
    assert run(tmp_path, capsys)[0] == 0
    saved = (tmp_path / "config.json").read_text()
    # A finished run asked for another lr trains nothing and changes nothing.
    code, out, _ = run(tmp_path, capsys, "--lr", "0.5")
    assert code == 0 and "nothing to train" in out
    assert (tmp_path / "config.json").read_text() == saved
    assert [r["lr"] for r in report.read_metrics(tmp_path)] == [0.1]
    # An edited config.json no longer describes the checkpoint: eval says so.
    edited = json.loads(saved)
    edited["model_overrides"] = {"activation": "relu"}
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"differs from the config that trained.*activation"):
        train.evaluate_workdir(tmp_path)
    code = cli.main(["eval", str(tmp_path)])
    assert code == 2 and "model_overrides" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_not_taken_for_a_damaged_one(tmp_path, capsys):
    assert run(tmp_path, capsys)[0] == 0
    edited = json.loads((tmp_path / "config.json").read_text())
    edited["model"] = "bn_lenet"
    checkpoints_config = edited
    (tmp_path / "config.json").write_text(json.dumps(checkpoints_config))
    from jaxcnn import checkpoints as ck
    from jaxcnn.checkpoints import abstract
    trainer = train.Trainer(config.Config.from_dict(edited), 4)
    store = ck.Checkpoints(tmp_path / "checkpoints", writable=False)
    try:
        with pytest.raises(CheckpointMismatchError, match="another model or by another version"):
            store.restore(abstract(trainer.initial_state))
    finally:
        store.close()
    assert steps(tmp_path) == ["4"]                          # nothing moved aside


def test_each_metrics_row_records_the_settings_that_may_change(tmp_path, capsys):
    assert run(tmp_path, capsys, "--epochs", "1")[0] == 0
    assert run(tmp_path, capsys, "--epochs", "2", "--lr", "0.05")[0] == 0
    rows = report.read_metrics(tmp_path)
    assert [(r["lr"], r["epochs"]) for r in rows] == [(0.1, 1), (0.05, 2)]
    assert all(r["devices"] == 1 and r["checkpoint_every"] == 0 for r in rows)


def test_a_live_run_holds_the_workdir_and_a_killed_one_does_not(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxcnn.workdir import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run(tmp_path, capsys)
        assert code == 2 and f"is in use by process {holder.pid} on " in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "checkpoints").exists()          # refused before any writing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid   # stale file
    code, _, _ = run(tmp_path, capsys)
    assert code == 0 and steps(tmp_path) == ["4"]


def test_two_runs_started_together_one_trains_the_other_refuses(tmp_path):
    command = [sys.executable, "-m", "jaxcnn", "train", "lenet", *SMALL, "--epochs", "3",
               "--workdir", str(tmp_path)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    assert any("is in use by process" in err for code, err in results if code == 2)
    assert [r["epoch"] for r in report.read_metrics(tmp_path)] == [1, 2, 3]


def test_start_up_removes_only_the_partial_writes_jaxcnn_makes(tmp_path, capsys):
    tmp_path.joinpath(".metrics.jsonl.abc123.tmp").write_text("partial")
    tmp_path.joinpath(".notes.tmp").write_text("the user's own")
    tmp_path.joinpath(".config.json.dir.tmp").mkdir()
    assert run(tmp_path, capsys)[0] == 0
    assert not tmp_path.joinpath(".metrics.jsonl.abc123.tmp").exists()
    assert tmp_path.joinpath(".notes.tmp").read_text() == "the user's own"
    assert tmp_path.joinpath(".config.json.dir.tmp").is_dir()


def test_a_held_out_split_validates_and_the_test_set_is_only_reported(tmp_path):
    one, other = cfg(val_examples=300, seed=0), cfg(val_examples=300, seed=5)
    a, b = train.splits(one), train.splits(other)
    np.testing.assert_array_equal(a.val[0], b.val[0])          # the same images every seed
    assert len(a.val[0]) == 300 and len(a.train[0]) == 512 and len(a.test[0]) == 256
    full = train.splits(cfg(val_examples=300, train_examples=None))
    assert len(full.train[0]) == 60_000 - 300
    held = {img.tobytes() for img in a.val[0]}
    assert not held & {img.tobytes() for img in full.train[0]}  # disjoint from training
    history = train.fit(cfg(val_examples=300, epochs=2, test_examples=None), tmp_path,
                        log=lambda s: None)
    assert all({"test_loss", "test_acc", "val_acc"} <= set(r) for r in history)
    assert all(r["val_acc"] != r["test_acc"] for r in history)
    best = max(range(2), key=lambda i: (history[i]["val_acc"], -i))
    result = train.evaluate_workdir(tmp_path)
    assert result["step"] == 4 * (best + 1)                   # chosen on val, not on test
    assert result["test_acc"] == history[best]["test_acc"]
    with pytest.raises(ValueError, match="leaves none of the 60,000 training images"):
        train.splits(cfg(val_examples=60_000))
    with pytest.raises(ValueError, match="more than the 59,700 images of the training split "
                                         "left after holding out 300"):
        train.splits(cfg(val_examples=300, train_examples=59_701))


def test_label_smoothing_curves_compare_the_smoothed_losses(tmp_path):
    history = train.fit(cfg(label_smoothing=0.1), tmp_path, log=lambda s: None)
    row = history[0]
    assert row["val_loss_smoothed"] > row["val_loss"] * 0.5 and \
        row["val_loss_smoothed"] != row["val_loss"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_a_step_too_big_for_memory_is_refused_before_anything_is_written(tmp_path, capsys):
    code = cli.main(["train", "lenet", "--image-size", "4096", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "needs at least" in err and "lower the image size" in err
    assert not (tmp_path / "w").exists()


def test_absurd_epoch_counts_and_image_sizes_are_refused():
    with pytest.raises(ValueError, match="epochs must be at most 10,000"):
        config.Config(epochs=10**9)
    with pytest.raises(ValueError, match="image_size must be at most 4096"):
        config.Config(image_size=10**30)
