"""The book's PyTorch models (d2l 7.6, 8.1-8.8): parameter counts against the book's and the
train step's speed, with PyTorch's defaults or tuned. The models live in
``jaxcnn.torch_models`` (``jaxcnn bench --compare-torch`` and ``jaxcnn.interop``'s tests use
them from there); this script is its command line.

    python experiments/torch_reference.py                      # parameter counts, all models
    python experiments/torch_reference.py lenet resnet18 --steps 20 --repeats 3   # + images/s
    python experiments/torch_reference.py resnet18 --steps 5 --tuned   # channels_last, bf16
        # autocast, cudnn.benchmark, TF32, torch.compile where they apply (it says which not)

Needs torch (`pip install -e '.[bench]'`). On 2 CPU cores --tuned applies channels_last, bf16
autocast and torch.compile, whose first compile took 17 s for LeNet and 46 s for ResNet-18.
"""

import sys

from jaxcnn.torch_models import main

if __name__ == "__main__":
    sys.exit(main())
