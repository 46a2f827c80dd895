# %%
"""d2l 8.4 -- GoogLeNet on Fashion-MNIST resized to 96, the book's recipe (SGD, lr 0.01, batch 128,
10 epochs).

Run (from the repository root):

    python experiments/googlenet.py [--workdir runs/googlenet-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary googlenet && jaxcnn train googlenet --recipe book``. Expected runtime
(estimated from a few timed steps and the multiply-adds, not a full run): several hours on 2 CPU
cores (30-45 minutes an epoch; a reduced run: ``--epochs 1``); on one H100/H200-class GPU 1-2
minutes. Results in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("googlenet", doc=__doc__)
    if status:
        raise SystemExit(status)
