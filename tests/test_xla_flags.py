"""jaxcnn.xla_flags: which jaxlib gets the YNNPACK-fusions-off flag, that the installed XLA
accepts it, and that training gives the same losses with it as without."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from processes import run_together

from jaxcnn import xla_flags

FLAG = xla_flags.YNN_FUSION_FLAG + "="


@pytest.mark.parametrize("version, expected", [
    ("0.7.2", []), ("0.8.0", []), ("0.8.1", [FLAG]), ("0.9.0.1", [FLAG]), ("0.10.2", [FLAG]),
    ("0.10.3rc1", [FLAG]), ("0.11.0", []), ("0.11.0.dev20261101", []), ("1.0.0", [])])
def test_the_flag_is_added_only_for_jaxlib_releases_checked_to_know_it(version, expected):
    assert xla_flags.cpu_defaults(version) == expected


def test_apply_appends_to_the_users_flags_and_never_overrides_them():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_flags.apply(env, "0.10.2") == [FLAG]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
    assert xla_flags.apply(env, "0.10.2") == []                      # applied once only
    own = {"XLA_FLAGS": f"{xla_flags.YNN_FUSION_FLAG}=dot"}
    assert xla_flags.apply(own, "0.10.2") == [] and own["XLA_FLAGS"].endswith("=dot")
    off = {"JAXCNN_XLA_DEFAULTS": "0"}
    assert xla_flags.apply(off, "0.10.2") == [] and "XLA_FLAGS" not in off
    old = {}
    assert xla_flags.apply(old, "0.8.0") == [] and "XLA_FLAGS" not in old


# Six train steps of LeNet and of the small VGG on one real batch; prints the losses as JSON.
STEPS = """
import json, sys
from jaxcnn import xla_flags
added = xla_flags.apply()
import jax, jax.numpy as jnp
from jaxcnn import data, train
from jaxcnn.config import Config
images, labels = data.fashion_mnist("train")
batch = next(data.batches(images, labels, 32, seed=0, epoch=0, train=True))
out = {"added": added}
for name, size, lr in [("lenet", 28, 0.1), ("vgg", 32, 0.01)]:
    trainer = train.Trainer(Config(model=name, image_size=size, lr=lr, batch_size=32), 10)
    state, losses = trainer.initial_state, []
    for _ in range(6):
        state, loss = trainer.train_step(state, batch)
        losses.append(float(loss))
    out[name] = losses
print(json.dumps(out))
"""


def run_steps(*envs: dict[str, str]) -> list[dict]:
    """STEPS in one child process per env, at once; each child's losses."""
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXCNN_XLA_DEFAULTS")}
    outs = run_together([(["-c", STEPS], {**environ, **env}) for env in envs])
    return [json.loads(out.splitlines()[-1]) for out in outs]


@pytest.mark.skipif(not xla_flags.cpu_defaults(), reason="this jaxlib gets no extra flags")
def test_installed_xla_accepts_the_flags_and_losses_match_without_them():
    fast, plain = run_steps({}, {"JAXCNN_XLA_DEFAULTS": "0"})
    assert fast["added"] == [FLAG] and plain["added"] == []
    for name in ("lenet", "vgg"):
        # Different fusions round differently; six steps stay within float32 noise.
        np.testing.assert_allclose(fast[name], plain[name], rtol=1e-4, err_msg=name)
        assert fast[name][-1] < fast[name][0]
