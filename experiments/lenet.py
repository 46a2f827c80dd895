# %%
"""d2l 7.6 -- LeNet on Fashion-MNIST with the book's recipe (SGD, lr 0.1, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/lenet.py [--workdir runs/lenet-book] [--seed 0] [other `jaxcnn train` flags]

the same as ``jaxcnn summary lenet && jaxcnn train lenet --recipe book``. Expected runtime:
about 50 s on 2 CPU cores (4-5 s an epoch); on a GPU not timed as a run (at the H200
benchmark's 110,000 train images/s the 10 epochs' steps take ~5.5 s). The book reaches a
validation accuracy of about 0.73-0.74; over 20 seeds, jaxcnn's median is 0.732 and the book's
recipe's in PyTorch 0.727 (`python experiments/torch_train.py lenet --seeds 0-19`, needs the
`bench` extra); the default seed 0 gives 0.7255. Results are in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("lenet", doc=__doc__)
    if status:
        raise SystemExit(status)
