"""The book's recipe in PyTorch, the outside reference for jaxcnn's book-recipe numbers: the
book's models (`torch_reference.py`: lazy layers, then `init_cnn`) trained by an equivalent of
d2l's `Trainer.fit` on `FashionMNIST(batch_size=128)` — reshuffled every epoch with the short
last batch kept, as `DataLoader(shuffle=True)` (469 steps an epoch), ToTensor's [0, 1] pixels,
SGD at the model's book learning rate, mean cross-entropy.

    python experiments/torch_train.py lenet --seeds 0-19      # ~25 s per seed on 2 CPU cores

Needs torch (`pip install -e '.[bench]'`). Reads the same Fashion-MNIST files as jaxcnn
(`jaxcnn.data.fashion_mnist`). Prints, per seed, the test accuracy after each epoch, counted
over all 10,000 test images (the book plots the mean of per-batch accuracies). Seed k seeds
torch's generator for the initialisation and the data order; it does not draw d2l's numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F
from torch_reference import MODELS, create

from jaxcnn import data, models

Split = tuple[torch.Tensor, torch.Tensor]   # images float32 (N, 1, 28, 28), labels int64 (N,)


def to_tensors(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 NHWC (N, 28, 28, 1) -> float32 NCHW in [0, 1] (ToTensor); labels -> int64."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    return x, torch.from_numpy(labels.astype(np.int64))


def epoch_batches(n: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """One epoch's index batches, as `DataLoader(shuffle=True)`: a fresh permutation of n cut
    into ceil(n / batch_size) batches, the last one short."""
    return torch.randperm(n).split(batch_size)


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: Split, batch_size: int) -> float:
    """Correct predictions / N over the whole split, in eval mode."""
    x, y = split
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    model.train()
    return correct / len(x)


def fit(name: str, *, seed: int, epochs: int, batch_size: int, lr: float, train: Split,
        test: Split) -> list[float]:
    """Test accuracy after each epoch of the book's loop for model ``name``."""
    model = create(name, seed=seed)                   # seeds torch's global generator
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    (x, y), history = train, []
    for _ in range(epochs):
        for idx in epoch_batches(len(x), batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(accuracy(model, test, batch_size))
    return history


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
