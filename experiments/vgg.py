"""d2l 8.2.3 -- VGG (the book's small arch) on Fashion-MNIST resized to 224, the book's recipe
(SGD, lr 0.01, batch 128, 10 epochs).

Run (from the repository root):

    python experiments/vgg.py [--workdir runs/vgg-book] [other `jaxcnn train` flags]

the same as ``jaxcnn summary vgg && jaxcnn train vgg --recipe book``. Expected runtime: hours
on 2 CPU cores (a reduced run: ``--epochs 1``); on one H100/H200-class GPU about 2 minutes.
The book reaches a validation accuracy of about 0.89-0.90; results in experiments/RESULTS.md.
"""

import sys

from jaxcnn import cli

if __name__ == "__main__":
    cli.main(["summary", "vgg"])
    raise SystemExit(cli.main(["train", "vgg", "--recipe", "book", *sys.argv[1:]]))
