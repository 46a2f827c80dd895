"""The experiment scripts run end to end; each checks its own values against the book's."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("script", ["conv_layer", "padding_strides", "channels", "pooling",
                                    "exercises"])
def test_chapter7_script(script):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / f"{script}.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
