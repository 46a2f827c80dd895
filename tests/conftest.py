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


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAXCNN_TEST_COMPILATION_CACHE"], ignore_errors=True)
