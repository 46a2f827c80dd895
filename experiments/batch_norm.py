# %%
"""d2l 8.5 -- LeNet with batch normalization on Fashion-MNIST (28x28), from scratch (8.5.2,
``bn_lenet_scratch``) and with nnx.BatchNorm (8.5.3, ``bn_lenet``), each with the book's recipe
(SGD, lr 0.1, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/batch_norm.py [other `jaxcnn train` flags, except --workdir]

the same as ``jaxcnn summary bn_lenet_scratch && jaxcnn train bn_lenet_scratch --recipe book``
and the same for ``bn_lenet``; the runs go to runs/bn_lenet_scratch-book and runs/bn_lenet-book.
Expected runtime: about 45 s per model on 2 CPU cores (4-5 s an epoch; measured), well under
that on a GPU. One such run ended at a validation accuracy of 0.876 (scratch) and 0.858
(nnx.BatchNorm). Results in experiments/RESULTS.md.
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("bn_lenet_scratch", "bn_lenet", doc=__doc__)
    if status:
        raise SystemExit(status)
