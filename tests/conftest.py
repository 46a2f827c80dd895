"""Set before any test starts JAX's backends (and inherited by the processes tests start):
two runs of one config on an H200 (jax 0.11.2) differed in the 7th digit of the first epoch's
mean loss. This flag turns off XLA's GPU kernel autotuning and atomic reductions, the known
sources of that, so that GPU runs repeat bit for bit as CPU runs do and the tests' "same run"
checks stay exact (not yet run on a GPU with it). The CPU backend ignores it."""

import os

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
if DETERMINISTIC not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC}".strip()
