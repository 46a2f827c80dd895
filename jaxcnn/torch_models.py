"""The book's PyTorch models (d2l 7.6, 8.1-8.8), written as the book writes them: the outside
reference that jaxcnn's parameter counts, logits (``interop``) and speed (``jaxcnn bench
--compare-torch``) are compared with. Optional: it needs torch (``pip install -e '.[bench]'``),
and nothing in jaxcnn imports it unless asked.

Every model takes 1-channel NCHW float32 images (at the book's size ``MODELS[name][1]`` unless
``create`` is given another) and returns logits; lazy modules are materialized by one forward
pass, then the book's ``init_cnn`` (Xavier-uniform) is applied. ``TrainStep`` times forward,
cross-entropy, backward and an SGD update on one fixed random batch, with PyTorch's defaults or
``tuned`` (``TUNED_SETTINGS``); ``fit`` is the book's training loop. ``python -m
jaxcnn.torch_models`` prints the parameter counts (and images/s with ``--steps``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as error:          # the optional dependency, named with how to get it
    raise ImportError("jaxcnn.torch_models needs PyTorch, which this Python cannot import; "
                      "install it with: pip install -e '.[bench]'") from error


def init_cnn(module: nn.Module) -> None:
    """The book's initialisation: Xavier-uniform weights for conv and dense layers."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


# ----------------------------------------------------------------------------------------------
# 7.6 LeNet and 8.5 LeNet with batch normalization
# ----------------------------------------------------------------------------------------------

def lenet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.LazyLinear(120), nn.Sigmoid(),
        nn.LazyLinear(84), nn.Sigmoid(),
        nn.LazyLinear(num_classes))


def bn_lenet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5), nn.LazyBatchNorm2d(),
        nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.LazyBatchNorm2d(),
        nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.LazyBatchNorm1d(),
        nn.Sigmoid(), nn.LazyLinear(84), nn.LazyBatchNorm1d(),
        nn.Sigmoid(), nn.LazyLinear(num_classes))


# ----------------------------------------------------------------------------------------------
# 8.1 AlexNet, 8.2 VGG, 8.3 NiN
# ----------------------------------------------------------------------------------------------

def alexnet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(96, kernel_size=11, stride=4, padding=1),
        nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LazyConv2d(256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(),
        nn.LazyConv2d(384, kernel_size=3, padding=1), nn.ReLU(),
        nn.LazyConv2d(256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(),
        nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.LazyLinear(num_classes))


def vgg_block(num_convs: int, out_channels: int) -> nn.Module:
    layers = []
    for _ in range(num_convs):
        layers.append(nn.LazyConv2d(out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(arch=((1, 16), (1, 32), (2, 64), (2, 128), (2, 128)), num_classes: int = 10) -> nn.Module:
    conv_blks = [vgg_block(num_convs, out_channels) for num_convs, out_channels in arch]
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
        nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
        nn.LazyLinear(num_classes))


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1), nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1), nn.ReLU())


def nin(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nin_block(96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


# ----------------------------------------------------------------------------------------------
# 8.4 GoogLeNet
# ----------------------------------------------------------------------------------------------

class Inception(nn.Module):
    """Four parallel branches concatenated on channels: c1, c2, c3, c4 output channels."""

    def __init__(self, c1, c2, c3, c4):
        super().__init__()
        self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
        self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
        self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
        self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x):
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


def googlenet(num_classes: int = 10) -> nn.Module:
    b1 = nn.Sequential(
        nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
        nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(
        nn.LazyConv2d(64, kernel_size=1), nn.ReLU(),
        nn.LazyConv2d(192, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(64, (96, 128), (16, 32), 32),
                       Inception(128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(192, (96, 208), (16, 48), 64),
                       Inception(160, (112, 224), (24, 64), 64),
                       Inception(128, (128, 256), (24, 64), 64),
                       Inception(112, (144, 288), (32, 64), 64),
                       Inception(256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(256, (160, 320), (32, 128), 128),
                       Inception(384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.LazyLinear(num_classes))


# ----------------------------------------------------------------------------------------------
# 8.6 ResNet
# ----------------------------------------------------------------------------------------------

class Residual(nn.Module):
    """The Residual block of ResNet models."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = (nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
                      if use_1x1conv else None)
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet(arch, num_classes: int = 10, residual=Residual) -> nn.Module:
    """The book's ResNet: stem, one stage ``b{i+2}`` per ``(num_residuals, num_channels)`` of
    ``arch``, head ``last``; ``residual(num_channels, use_1x1conv, strides)`` builds the blocks."""
    def block(num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(residual(num_channels, use_1x1conv=True, strides=2))
            else:
                blk.append(residual(num_channels))
        return nn.Sequential(*blk)

    net = nn.Sequential(nn.Sequential(
        nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    for i, b in enumerate(arch):
        net.add_module(f"b{i + 2}", block(*b, first_block=(i == 0)))
    net.add_module("last", nn.Sequential(
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
    return net


def resnet18(num_classes: int = 10) -> nn.Module:
    return resnet(((2, 64), (2, 128), (2, 256), (2, 512)), num_classes)


def resnext(groups: int = 16, bot_mul: float = 1, num_classes: int = 10) -> nn.Module:
    """ResNet-18's layout of the book's ResNeXt blocks with ``groups`` groups in every block
    (jaxcnn's 'resnext'; the book's ``ResNeXtBlock`` takes the group *width*, so each stage
    passes its bottleneck channels // ``groups``)."""
    def residual(num_channels, use_1x1conv=False, strides=1):
        width = int(round(num_channels * bot_mul)) // groups
        return ResNeXtBlock(num_channels, width, bot_mul, use_1x1conv, strides)
    return resnet(((2, 64), (2, 128), (2, 256), (2, 512)), num_classes, residual)


# ----------------------------------------------------------------------------------------------
# 8.7 DenseNet
# ----------------------------------------------------------------------------------------------

def conv_block(num_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs, num_channels):
        super().__init__()
        self.net = nn.Sequential(*[conv_block(num_channels) for _ in range(num_convs)])

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)   # concatenate input and output on the channels
        return X


def transition_block(num_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.LazyConv2d(num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2))


def densenet(num_channels=64, growth_rate=32, arch=(4, 4, 4, 4), num_classes=10) -> nn.Module:
    net = nn.Sequential(nn.Sequential(
        nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    for i, num_convs in enumerate(arch):
        net.add_module(f"dense_blk{i + 1}", DenseBlock(num_convs, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(arch) - 1:
            num_channels //= 2
            net.add_module(f"tran_blk{i + 1}", transition_block(num_channels))
    net.add_module("last", nn.Sequential(
        nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.LazyLinear(num_classes)))
    return net


# ----------------------------------------------------------------------------------------------
# 8.8 RegNet (AnyNet of ResNeXt blocks; the book's `groups` is the group *width*)
# ----------------------------------------------------------------------------------------------

class ResNeXtBlock(nn.Module):
    """The ResNeXt block."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1):
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(bot_channels, kernel_size=3, stride=strides, padding=1,
                                   groups=bot_channels // groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()
        self.bn3 = nn.LazyBatchNorm2d()
        if use_1x1conv:
            self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
            self.bn4 = nn.LazyBatchNorm2d()
        else:
            self.conv4 = None

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


def anynet(arch, stem_channels, num_classes=10) -> nn.Module:
    def stage(depth, num_channels, groups, bot_mul):
        blk = []
        for i in range(depth):
            if i == 0:
                blk.append(ResNeXtBlock(num_channels, groups, bot_mul,
                                        use_1x1conv=True, strides=2))
            else:
                blk.append(ResNeXtBlock(num_channels, groups, bot_mul))
        return nn.Sequential(*blk)

    net = nn.Sequential(nn.Sequential(
        nn.LazyConv2d(stem_channels, kernel_size=3, stride=2, padding=1),
        nn.LazyBatchNorm2d(), nn.ReLU()))
    for i, s in enumerate(arch):
        net.add_module(f"stage{i + 1}", stage(*s))
    net.add_module("head", nn.Sequential(
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
    return net


def regnetx32(num_classes: int = 10) -> nn.Module:
    stem_channels, groups, bot_mul = 32, 16, 1
    depths, channels = (4, 6), (32, 80)
    return anynet(((depths[0], channels[0], groups, bot_mul),
                   (depths[1], channels[1], groups, bot_mul)), stem_channels, num_classes)


# ----------------------------------------------------------------------------------------------
# The registry (jaxcnn's names) and parameter counts
# ----------------------------------------------------------------------------------------------

# name -> (builder(num_classes=...), the book's input side). The book's from-scratch BatchNorm
# (8.5.2) keeps its moving statistics outside ``state_dict``; nn.BatchNorm holds the same state
# under state_dict keys, so the concise BN-LeNet stands for bn_lenet_scratch.
MODELS = {
    "lenet": (lenet, 28),
    "vgg": (vgg, 224),
    "vgg11": (lambda num_classes: vgg(((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
                                       num_classes), 224),
    "resnet18": (resnet18, 96),
    "resnext": (lambda num_classes: resnext(num_classes=num_classes), 96),
    "alexnet": (alexnet, 224),
    "nin": (nin, 224),
    "googlenet": (googlenet, 96),
    "bn_lenet_scratch": (bn_lenet, 28),
    "bn_lenet": (bn_lenet, 28),
    "densenet": (densenet, 96),
    "regnetx32": (regnetx32, 96),
}
# The parameter counts of the book's models for 1 input channel and 10 classes (resnext, which
# the book builds only as a block, as these modules count it).
BOOK_PARAMS = {"lenet": 61_706, "vgg": 43_093_322, "vgg11": 128_806_154,
               "resnet18": 11_178_378, "resnext": 1_812_746, "alexnet": 46_764_746,
               "nin": 1_992_166, "googlenet": 5_977_530, "bn_lenet_scratch": 44_878,
               "bn_lenet": 44_878, "densenet": 758_226, "regnetx32": 179_290}


def create(name: str, *, num_classes: int = 10, image_size: int | None = None,
           seed: int = 0) -> nn.Module:
    """The book's model ``name`` for ``(N, 1, S, S)`` inputs (S = ``image_size``, default the
    book's), its lazy modules materialized and ``init_cnn`` applied; in train mode."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    build, book_size = MODELS[name]
    size = book_size if image_size is None else image_size
    torch.manual_seed(seed)
    model = build(num_classes=num_classes)
    model.eval()                      # batch 1 through BatchNorm1d needs running statistics
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    model.apply(init_cnn)
    return model.train()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# The timed train step, with PyTorch's defaults or tuned
# ----------------------------------------------------------------------------------------------

# Where TrainStep runs: the GPU when PyTorch sees one, else the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# What a PyTorch user who cares about speed turns on (``TrainStep(tuned=True)``).
TUNED_SETTINGS = ("channels_last", "bf16 autocast", "cudnn.benchmark", "TF32 matmuls",
                  "torch.compile")


def tuned_settings(device: torch.device = DEVICE) -> dict[str, str | None]:
    """Each of ``TUNED_SETTINGS`` -> None where it applies on ``device``, else why not."""
    cuda = device.type == "cuda"
    if cuda:
        bf16 = None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16"
    else:
        bf16 = (None if torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                else "this CPU has no bfloat16 instructions (oneDNN)")
    major = torch.cuda.get_device_capability(device)[0] if cuda else 0
    compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return {"channels_last": None,
            "bf16 autocast": bf16,
            "cudnn.benchmark": None if cuda else "no cuDNN on the CPU",
            "TF32 matmuls": (None if major >= 8 else "TF32 needs an NVIDIA GPU of compute "
                             "capability 8.0 or later" if cuda else "TF32 is a GPU number format"),
            "torch.compile": (None if cuda or compiler else "inductor's CPU code needs a C++ "
                              "compiler, and none is on PATH")}


class TrainStep:
    """One SGD train step of model ``name`` on a fixed random batch: images float32
    ``(batch_size, 1, S, S)``, labels int64 ``(batch_size,)``, on ``DEVICE``. ``tuned``: with
    every one of ``TUNED_SETTINGS`` that applies there (``self.settings``: name -> None if
    applied, else the reason it is not; cudnn.benchmark and TF32 are process-wide flags).
    ``time(steps)`` -> seconds."""

    def __init__(self, name: str, batch_size: int = 128, image_size: int | None = None,
                 lr: float = 0.01, seed: int = 0, tuned: bool = False):
        self.settings = tuned_settings() if tuned else {}
        applied = {k for k, why in self.settings.items() if why is None}
        self.model = create(name, image_size=image_size, seed=seed).to(DEVICE)
        size = MODELS[name][1] if image_size is None else image_size
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(batch_size, 1, size, size, generator=generator).to(DEVICE)
        self.labels = torch.randint(0, 10, (batch_size,), generator=generator).to(DEVICE)
        if "channels_last" in applied:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        if DEVICE.type == "cuda":
            torch.backends.cudnn.benchmark = "cudnn.benchmark" in applied
            torch.backends.cuda.matmul.allow_tf32 = "TF32 matmuls" in applied
        self.forward = torch.compile(self.model) if "torch.compile" in applied else self.model
        self.autocast = ((lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16))
                         if "bf16 autocast" in applied else contextlib.nullcontext)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def step(self) -> torch.Tensor:
        """Forward, cross-entropy, backward, SGD update; returns the loss (on the device)."""
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def time(self, steps: int) -> float:
        """Seconds for ``steps`` consecutive steps, until the last one's loss is on the host
        (as jaxcnn's side: steps queue without a read-back, the clock stops when the last
        result is ready; on the CPU every step finishes before the next starts anyway)."""
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()
        return time.perf_counter() - start


def device_name() -> str:
    """``DEVICE`` as the benchmark's table names it: the GPU's model, or ``cpu``."""
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


# ----------------------------------------------------------------------------------------------
# The book's training loop (d2l's Trainer.fit on FashionMNIST(batch_size=128))
# ----------------------------------------------------------------------------------------------

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
def accuracy(model: nn.Module, split: Split, batch_size: int) -> float:
    """Correct predictions / N over the whole split, in eval mode."""
    x, y = split
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    model.train()
    return correct / len(x)


def fit(name: str, *, seed: int, epochs: int, batch_size: int, lr: float, train: Split,
        test: Split) -> list[float]:
    """Test accuracy after each epoch of the book's loop for model ``name``: a fresh shuffle
    each epoch with the short last batch kept, SGD at ``lr``, mean cross-entropy."""
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


# ----------------------------------------------------------------------------------------------
# The PyTorch side of `jaxcnn bench --compare-torch`, and the command line
# ----------------------------------------------------------------------------------------------

def serve() -> None:
    """One JSON request per stdin line, one JSON reply per stdout line. Requests:
    ``{"op": "build", "model", "batch_size", "image_size", "warmup", "tuned"}`` ->
    ``{"params", "threads", "torch", "device", "settings"}`` (or ``{"error"}``);
    ``{"op": "time", "steps"}`` -> ``{"seconds"}``. Stops at the end of stdin."""
    bench = None
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "build":
            try:
                bench = TrainStep(request["model"], request["batch_size"], request["image_size"],
                                  tuned=request.get("tuned", False))
            except ValueError as error:                     # an unknown model name
                print(json.dumps({"error": str(error)}), flush=True)
                continue
            warmup_start = time.perf_counter()
            bench.time(request["warmup"])
            reply = {"params": num_params(bench.model), "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "device": device_name(),
                     "settings": bench.settings, "described": describe_settings(bench.settings),
                     "warmup_s": time.perf_counter() - warmup_start}
        else:
            reply = {"seconds": bench.time(request["steps"])}
        print(json.dumps(reply), flush=True)


def describe_settings(settings: dict[str, str | None]) -> str:
    """'tuned: a, b; skipped: c (why)' for ``TrainStep.settings``; "PyTorch's defaults" when
    empty."""
    if not settings:
        return "PyTorch's defaults"
    applied = [k for k, why in settings.items() if why is None]
    skipped = [f"{k} ({why})" for k, why in settings.items() if why is not None]
    return (f"tuned: {', '.join(applied) or 'nothing'}"
            + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))


def main(argv=None) -> int:
    """``python -m jaxcnn.torch_models [MODEL ...] [--steps N --tuned]``: parameter counts
    against the book's, and with ``--steps`` the train step's images/s."""
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.torch_models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"default: all of {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0,
                        help="train steps per timed repeat (default 0: counts only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tuned", action="store_true",
                        help=f"time with {', '.join(TUNED_SETTINGS)} where they apply")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    settings = tuned_settings() if args.tuned and args.steps else {}
    print(f"torch {torch.__version__} on {device_name()}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, float32 NCHW" + (f"; {describe_settings(settings)}"
                                                      if settings else ""))
    failed = []
    for name in args.models or MODELS:
        if args.steps:
            bench = TrainStep(name, args.batch_size, tuned=args.tuned)
            warmup = bench.time(2)                            # warm-up (and torch.compile)
            rates = [args.steps * args.batch_size / bench.time(args.steps)
                     for _ in range(args.repeats)]
            model, speed = bench.model, (f"  {statistics.median(rates):9,.1f} images/s "
                                         f"(median of {args.repeats} x {args.steps} steps; "
                                         f"warm-up {warmup:.1f} s)")
        else:
            model, speed = create(name), ""
        count = num_params(model)
        ok = count == BOOK_PARAMS[name]
        failed += [] if ok else [name]
        print(f"{name:16s} {MODELS[name][1]:4d}px  {count:12,d} parameters "
              f"{'(the book: ok)' if ok else f'!= the book {BOOK_PARAMS[name]:,}'}{speed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
