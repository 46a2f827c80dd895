"""Many seeds in one command: each seed's run equals its single-seed run, in every mode; the
group's workdir, summary and resumption; the pure initial state vmaps."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxcnn import cli, config, report, train

COMPARED = ("train_loss", "val_loss", "val_acc")


def cfg(model: str = "lenet", **overrides) -> config.Config:
    values = dict(epochs=2, batch_size=64, train_examples=640, test_examples=500,
                  checkpoint_every=4)
    return config.recipe(model, **{**values, **overrides})


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-seed runs of seeds 0 and 3 for LeNet and BN-LeNet."""
    root = tmp_path_factory.mktemp("single")
    return {(model, seed): train.fit(cfg(model, seed=seed), root / f"{model}-{seed}",
                                     log=lambda s: None)
            for model in ("lenet", "bn_lenet") for seed in (0, 3)}


@pytest.mark.parametrize("model, mode", [("lenet", "interleave"), ("lenet", "sequential"),
                                         ("lenet", "vmap"), ("bn_lenet", "vmap"),
                                         ("bn_lenet", "interleave")])
def test_each_seed_trains_as_its_single_seed_run(tmp_path, single, model, mode):
    runs = train.fit_seeds(cfg(model), tmp_path, [0, 3], mode=mode, log=lambda s: None)
    for seed in (0, 3):
        got, want = runs.histories[seed], single[(model, seed)]
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            for key in COMPARED:
                if mode == "vmap":      # vmapped kernels may round differently
                    assert g[key] == pytest.approx(w[key], rel=1e-5, abs=2e-3 * (key == "val_acc"))
                else:                   # the very same jitted step
                    assert g[key] == w[key], (seed, key)
        assert report.read_metrics(tmp_path / f"seed-{seed}") == got
    assert runs.histories[0] != runs.histories[3]        # the seeds differ


def test_the_group_workdir_holds_runs_a_summary_and_curves(tmp_path, single):
    runs = train.fit_seeds(cfg(), tmp_path, [0, 3], log=lambda s: None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == runs.summary and [e["epoch"] for e in summary] == [1, 2]
    for entry in summary:
        accs = [runs.histories[s][entry["epoch"] - 1]["val_acc"] for s in (0, 3)]
        stats = entry["val_acc"]
        assert entry["seeds"] == 2 and stats["min"] == min(accs) and stats["max"] == max(accs)
        assert stats["mean"] == pytest.approx(np.mean(accs))
        assert stats["median"] == pytest.approx(np.median(accs))
        assert stats["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / train.SEEDS_FILE).read_text())["seeds"] == [0, 3]
    # Every seed's folder is a normal workdir.
    result = train.evaluate_workdir(tmp_path / "seed-3")
    accs = [row["val_acc"] for row in runs.histories[3]]
    assert result["step"] == 10 * (accs.index(max(accs)) + 1) and 0 < result["test_acc"] < 1
    model = train.load_model(tmp_path / "seed-0", "latest")
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
    # Run again: every seed is finished; more seeds join and only they train.
    messages = []
    more = train.fit_seeds(cfg(), tmp_path, [0, 3, 5], log=messages.append)
    assert sum("nothing to train" in m for m in messages) == 2
    assert more.histories[0] == runs.histories[0] and len(more.histories[5]) == 2
    assert json.loads((tmp_path / "summary.json").read_text())[0]["seeds"] == 3


def test_the_cli_trains_seeds_and_reports_their_median(tmp_path, capsys):
    argv = ["train", "lenet", "--seeds", "0-1", "--epochs", "1", "--train-examples", "256",
            "--test-examples", "256", "--checkpoint-every", "0", "--workdir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "seeds 0-1, 2 runs" in out and "final val_acc over 2 seeds: median" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"median {summary[-1]['val_acc']['median']:.4f}" in out
    assert cli.main([*argv, "--seed", "4"]) == 2
    assert "--seed and --seeds both given" in capsys.readouterr().err
    assert cli.main([*argv, "--devices", "2"]) == 2
    assert "--devices 2 with --seeds is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("0,3,7", [0, 3, 7]),
                                         ("0-2,9,1", [0, 1, 2, 9]), ("5", [5])])
def test_seed_lists(text, seeds):
    assert train.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-", "0,,2"])
def test_bad_seed_lists(text):
    with pytest.raises(ValueError, match="seeds such as 0-19"):
        train.parse_seeds(text)


def test_a_diverging_seed_stops_the_group_naming_it(tmp_path):
    with pytest.raises(train.DivergenceError, match=r"^seed [01]: training diverged"):
        train.fit_seeds(cfg(lr=1e6, epochs=1), tmp_path, [0, 1], mode="vmap",
                        log=lambda s: None)


def test_the_initial_state_is_pure_and_vmaps():
    trainer = train.Trainer(cfg("bn_lenet"), 10)
    keys = jax.random.split(jax.random.key(0), 3)
    init = jax.jit(lambda k: train.init_state(trainer.cfg, trainer.tx, k)[0])
    stacked = jax.jit(jax.vmap(init))(keys)
    for i, key in enumerate(keys):
        one = init(key)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(stacked), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=1e-6)
    # A seed's state: its own parameters and training key.
    zero, three = trainer.init(0), trainer.init(3)
    assert not np.array_equal(zero["key"], three["key"])
    assert not np.array_equal(jax.tree.leaves(zero["params"])[0],
                              jax.tree.leaves(three["params"])[0])


def test_bfloat16_seeds_train_in_a_vmapped_group(tmp_path):
    runs = train.fit_seeds(cfg(dtype="bfloat16", epochs=1), tmp_path, [0, 1], mode="vmap",
                           log=lambda s: None)
    assert all(np.isfinite(h[0]["train_loss"]) for h in runs.histories.values())


@pytest.mark.parametrize("model, seeds, mode", [("lenet", None, None),
                                                ("bn_lenet", [0, 3], "vmap"),
                                                ("lenet", [0, 3], "interleave")])
def test_steps_gathered_on_the_device_in_one_dispatch_train_as_one_a_dispatch(
        tmp_path, single, model, seeds, mode):
    """The scan path, forced on the CPU: 3 steps a dispatch (10 an epoch: dispatches of 3, 1
    before the checkpoint at step 4, ...), against the host path's one step a dispatch."""
    if seeds is None:
        got = {0: train.fit(cfg(model), tmp_path, log=lambda s: None, steps_per_dispatch=3)}
    else:
        got = train.fit_seeds(cfg(model), tmp_path, seeds, mode=mode, log=lambda s: None,
                              steps_per_dispatch=3).histories
    for seed, history in got.items():
        want = single[(model, seed)]
        for g, w in zip(history, want, strict=True):
            for key in COMPARED:
                assert g[key] == pytest.approx(w[key], rel=1e-6), (seed, key)
    folder = tmp_path if seeds is None else tmp_path / "seed-0"
    assert sorted(int(p.name) for p in (folder / "checkpoints" / "latest").iterdir()) == [16, 20]
