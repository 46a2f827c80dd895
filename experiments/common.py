"""Shared by the experiment scripts: print a value beside the book's and fail loudly on a
mismatch (chapter 7); run the book's recipe for a section's models (chapter 8)."""

from __future__ import annotations

import sys

import numpy as np

from jaxcnn import cli


def check(label: str, got, expected, atol: float = 1e-5) -> None:
    """Print ``label: got`` and raise ``AssertionError`` unless it equals ``expected``."""
    got, expected = np.asarray(got), np.asarray(expected)
    print(f"{label}:\n{got}")
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol):
        raise AssertionError(f"{label}: expected {expected.shape}\n{expected}\n"
                             f"got {got.shape}\n{got}")


def reproduce(*models: str, doc: str = "", argv: list[str] | None = None) -> int:
    """``jaxcnn summary MODEL``, then ``jaxcnn train MODEL --recipe book`` with ``argv`` (default:
    this script's flags; none in a notebook), for each model in turn; ``-h`` prints ``doc`` (the
    script's docstring) instead. Returns the first nonzero exit status, else 0. Several models
    never share one ``--workdir`` (the second would be refused, or with ``--force-new`` erase
    the first), so that flag is refused for them."""
    if argv is None:   # in a notebook, sys.argv is the kernel's own, not this script's
        argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
    flags = [a.split("=")[0] for a in argv]
    # argparse also takes an unambiguous abbreviation ("--work DIR", "--he").
    if any(f == "-h" or len(f) > 2 and "--help".startswith(f) for f in flags):
        print(doc.strip())
        print(f"\nOther flags: those of `jaxcnn train` (`jaxcnn train --help`), without MODEL: "
              f"this script trains {' and '.join(models)}.")
        return 0
    if len(models) > 1 and any(len(f) > 3 and "--workdir".startswith(f) for f in flags):
        print(f"error: --workdir is not taken here: {', '.join(models)} each train into "
              f"runs/MODEL-book", file=sys.stderr)
        return 2
    for name in models:
        status = (cli.main(["summary", name])
                  or cli.main(["train", name, "--recipe", "book", *argv]))
        if status:
            return status
    return 0
