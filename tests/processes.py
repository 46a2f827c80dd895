"""A Python snippet run in a child process, for tests that need JAX to start afresh (another
device count, other XLA flags: XLA reads them once per process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float = 300) -> str:
    """``python ARGV`` in ``env``; fails the test with the child's output unless it exits 0;
    returns its stdout."""
    result = subprocess.run([sys.executable, *argv], env=dict(env), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


def run_python(code: str, env: Mapping[str, str], timeout: float = 300) -> str:
    """Runs ``code`` (dedented) as ``python -c`` in ``env``, as ``run`` does."""
    return run(["-c", textwrap.dedent(code)], env, timeout)


def run_together(runs: Sequence[tuple[Sequence[str], Mapping[str, str]]],
                 timeout: float = 300) -> list[str]:
    """``run(argv, env)`` for each ``(argv, env)`` of ``runs`` at once, one child process each
    (their JAX start-ups and compiles overlap); the stdouts in the order of ``runs``."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda r: run(*r, timeout=timeout), runs))
