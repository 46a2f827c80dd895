"""The book's training run in PyTorch, the outside reference for jaxcnn's book-recipe numbers:
d2l's `Trainer.fit` on `FashionMNIST(batch_size=128)` — a DataLoader that reshuffles every
epoch and keeps the short last batch (469 steps per epoch), ToTensor's [0, 1] pixels, SGD at
the model's book learning rate, cross-entropy — with the models of `torch_reference.py`.

    python experiments/torch_train.py lenet --seeds 0-9       # ~30 s per seed on 2 CPU cores

Reads the same Fashion-MNIST files as jaxcnn (`jaxcnn.data.fashion_mnist`). Prints, per seed,
the test accuracy after each epoch, counted over all 10,000 test images (the book plots the
mean of per-batch accuracies; the two differ by < 0.001 here). Needs torch (the bench extra).
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


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC [N, 28, 28, 1] -> float32 NCHW in [0, 1] (ToTensor), int64 labels."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    return x, torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def fit(name: str, seed: int, epochs: int, batch_size: int, lr: float, train, test) -> list:
    """Test accuracy after each epoch of the book's loop, seeded as ``torch.manual_seed``."""
    model = create(name, seed=seed)                   # seeds torch's global generator
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    (x, y), history = train, []
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):   # DataLoader(shuffle=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(accuracy(model, *test, batch_size))
    return history


def seeds(text: str) -> list[int]:
    """'0-9' or '0,3,5' -> a list of seeds."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=[m for m in MODELS if MODELS[m][1] == 28])
    parser.add_argument("--seeds", type=seeds, default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="default: the book's")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    lr = models.spec(args.model).book_lr if args.lr is None else args.lr
    train = to_tensors(*data.fashion_mnist("train", args.data_dir))
    test = to_tensors(*data.fashion_mnist("test", args.data_dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {args.model}, "
          f"SGD lr {lr}, batch {args.batch_size}, {args.epochs} epochs")
    finals = []
    for seed in args.seeds:
        start = time.perf_counter()
        history = fit(args.model, seed, args.epochs, args.batch_size, lr, train, test)
        finals.append(history[-1])
        print(f"seed {seed}: final val_acc {history[-1]:.4f}  ({time.perf_counter() - start:.0f} s;"
              f" epochs: {' '.join(f'{a:.4f}' for a in history)})", flush=True)
    if len(finals) > 1:
        print(f"mean {statistics.mean(finals):.4f}, sd {statistics.stdev(finals):.4f}, "
              f"min {min(finals):.4f}, max {max(finals):.4f}, "
              f">= 0.73: {sum(a >= 0.73 for a in finals)} of {len(finals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
