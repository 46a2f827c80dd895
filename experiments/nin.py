# %%
"""d2l 8.3 -- Network in Network on Fashion-MNIST resized to 224, the book's recipe (SGD, lr 0.05,
batch 128, 10 epochs).

Run (from the repository root):

    python experiments/nin.py [--workdir runs/nin-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary nin && jaxcnn train nin --recipe book``. Expected runtime (estimated
from a few timed steps and the multiply-adds, not a full run): many hours on 2 CPU cores (over an
hour an epoch; a reduced run: ``--epochs 1``); on one H100/H200-class GPU about 2-3 minutes.
Results in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("nin", doc=__doc__)
    if status:
        raise SystemExit(status)
