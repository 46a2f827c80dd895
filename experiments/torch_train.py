"""The book's recipe in PyTorch, the outside reference for jaxcnn's book-recipe numbers: the
book's models (`torch_reference.py`: lazy layers, then `init_cnn`) trained by an equivalent of
d2l's `Trainer.fit` on `FashionMNIST(batch_size=128)` — reshuffled every epoch with the short
last batch kept, as `DataLoader(shuffle=True)` (469 steps an epoch), ToTensor's [0, 1] pixels,
SGD at the model's book learning rate, mean cross-entropy.

    python experiments/torch_train.py lenet --seeds 0-19      # ~25 s per seed on 2 CPU cores

Needs torch (`pip install -e '.[bench]'`). The models and the loop live in
`jaxcnn.torch_models`; this script is their command line. Reads the same Fashion-MNIST files as
jaxcnn (`jaxcnn.data.fashion_mnist`). Prints, per seed, the test accuracy after each epoch, counted
over all 10,000 test images (the book plots the mean of per-batch accuracies). Seed k seeds
torch's generator for the initialisation and the data order; it does not draw d2l's numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from jaxcnn import data, models
from jaxcnn.torch_models import MODELS, fit, to_tensors


def seeds(text: str) -> list[int]:
    """'0-9', '0,3,5' or '0-4,7' -> the list of seeds."""
    chosen = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        chosen += range(int(first), int(last or first) + 1)
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=[m for m in MODELS if MODELS[m][1] == 28])
    parser.add_argument("--seeds", type=seeds, default=[0], help="e.g. 0-19 (default 0)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="default: the book's")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.epochs <= 0:
        parser.error(f"--batch-size and --epochs must be > 0, got {args.batch_size}, "
                     f"{args.epochs}")
    lr = models.spec(args.model).book_lr if args.lr is None else args.lr
    train = to_tensors(*data.fashion_mnist("train", args.data_dir))
    test = to_tensors(*data.fashion_mnist("test", args.data_dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {args.model}, "
          f"SGD lr {lr}, batch {args.batch_size}, {args.epochs} epochs")
    finals = []
    for seed in args.seeds:
        start = time.perf_counter()
        history = fit(args.model, seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                      lr=lr, train=train, test=test)
        finals.append(history[-1])
        print(f"seed {seed}: final val_acc {history[-1]:.4f}  ({time.perf_counter() - start:.0f} s;"
              f" epochs: {' '.join(f'{a:.4f}' for a in history)})", flush=True)
    if len(finals) > 1:
        print(f"mean {statistics.mean(finals):.4f}, sd {statistics.stdev(finals):.4f}, "
              f"min {min(finals):.4f}, median {statistics.median(finals):.4f}, "
              f"max {max(finals):.4f}, >= 0.73: {sum(a >= 0.73 for a in finals)} of "
              f"{len(finals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
