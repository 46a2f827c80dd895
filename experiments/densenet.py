# %%
"""d2l 8.7 -- DenseNet (four dense blocks of 4 convs, growth rate 32) on Fashion-MNIST resized to
96, the book's recipe (SGD, lr 0.01, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/densenet.py [--workdir runs/densenet-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary densenet && jaxcnn train densenet --recipe book``. Expected runtime
(estimated from a few timed steps and the multiply-adds, not a full run): 2-3 hours on 2 CPU cores
(15-20 minutes an epoch; a reduced run: ``--epochs 1``); on one H100/H200-class GPU about a minute.
Results in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("densenet", doc=__doc__)
    if status:
        raise SystemExit(status)
