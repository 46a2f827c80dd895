"""Set before any test starts JAX's backends (and inherited by the processes tests start).

* A persistent compilation cache in a temporary directory of this run, shared by the tests
  and the processes they start: many tests build the same steps (one model at one size in
  several Trainers, a run and its resumption, a CLI subprocess and its library twin), and XLA
  compiles each program once. Every compile is kept (minimum compile time 0). Removed at the
  end of the session.
* ``JAXCNN_REPORT=0``: ``jaxcnn train`` skips its end-of-run report (3-5 s a run on these CPUs,
  and the suite trains through the CLI dozens of times); the report has its own tests, and
  test_train checks that ``jaxcnn train`` writes it.
* Two runs of one config on an H200 (jax 0.11.2) differed in the 7th digit of the first epoch's
  mean loss. ``--xla_gpu_deterministic_ops`` turns off XLA's GPU kernel autotuning and atomic
  reductions, the known sources of that, so that GPU runs repeat bit for bit as CPU runs do and
  the tests' "same run" checks stay exact. The CPU backend ignores it.

The slowest test files are collected first (``SLOWEST_FIRST``): pytest-xdist's workers take
whole files in collection order (``--no-loadscope-reorder`` in pyproject.toml), so the two
finish together instead of one idling while the other runs a large file to its end.
"""

import os
import shutil
import tempfile

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
if DETERMINISTIC not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC}".strip()

# pytest-xdist's workers inherit the controller's directory through the environment.
_OWN_CACHE = "JAXCNN_TEST_COMPILATION_CACHE" not in os.environ
if _OWN_CACHE:
    os.environ["JAXCNN_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxcnn-xla-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXCNN_TEST_COMPILATION_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAXCNN_REPORT"] = "0"


# By wall time in the suite (2-core Intel Xeon, two workers): test_train 113 s, test_models 78,
# test_interop 74, test_reliability 62, test_seeds 58, test_parallel 49, test_bench 45,
# test_ops 45; the rest 7-33 s each, after these in their usual order.
SLOWEST_FIRST = ("test_train.py", "test_models.py", "test_interop.py", "test_reliability.py",
                 "test_seeds.py", "test_parallel.py", "test_bench.py", "test_ops.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable within a file


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAXCNN_TEST_COMPILATION_CACHE"], ignore_errors=True)
