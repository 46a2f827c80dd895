"""A Python snippet run in a child process, for tests that need JAX to start afresh (another
device count, other XLA flags: XLA reads them once per process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping


def run_python(code: str, env: Mapping[str, str], timeout: float = 300) -> str:
    """Runs ``code`` (dedented) as ``python -c`` in ``env``; fails the test with the child's
    output unless it exits 0; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=dict(env),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout
