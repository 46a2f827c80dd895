# %%
"""d2l 8.2.3 -- VGG (the book's small arch) on Fashion-MNIST resized to 224, the book's recipe
(SGD, lr 0.01, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/vgg.py [--workdir runs/vgg-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary vgg && jaxcnn train vgg --recipe book``. Expected runtime: about
3 hours on 2 CPU cores (52 images/s measured by ``jaxcnn bench``; a reduced run:
``--epochs 1 --train-examples 6400``, about 8 minutes); on one H200: 86 s in all, compile
included, measured while another training run shared the GPU (3.1 s an epoch once alone).
The book reaches a validation accuracy of about 0.89-0.90; seed 0 here: 0.8913 after 10 epochs
(experiments/RESULTS.md).
"""

from common import reproduce

# %%
if __name__ == "__main__":
    status = reproduce("vgg", doc=__doc__)
    if status:
        raise SystemExit(status)
