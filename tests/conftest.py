"""Set before any test starts JAX's backends (and inherited by the processes tests start):
XLA's GPU compiler autotunes kernels and reduces with atomics, so two runs of one config there
differ in the last digits (the 7th digit of the first epoch's mean loss on an H200 with jax
0.11.2); this flag makes GPU runs repeat bit for bit, as CPU runs do, so the tests' "same run"
checks stay exact on both. The CPU backend ignores it."""

import os

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
if DETERMINISTIC not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC}".strip()
