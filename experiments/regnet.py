# %%
"""d2l 8.8 -- RegNetX-32 (AnyNet with the book's settings) on Fashion-MNIST resized to 96, the
book's recipe (SGD, lr 0.05, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/regnet.py [--workdir runs/regnetx32-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary regnetx32 && jaxcnn train regnetx32 --recipe book``. Expected runtime
(estimated from a few timed steps and the multiply-adds, not a full run): many hours on 2 CPU cores
(XLA's grouped convolutions are slow there: about an hour an epoch; a reduced run: ``--epochs 1``);
on one H100/H200-class GPU about a minute. Results in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("regnetx32", doc=__doc__)
    if status:
        raise SystemExit(status)
