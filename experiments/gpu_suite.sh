#!/usr/bin/env bash
# The GPU checks of the performance issue, as one prepared script for one GPU (~8 minutes on an
# H100/H200-class card): `jaxcnn bench` for the book's models in float32 and bfloat16, then the
# book's 10-epoch recipes for ResNet-18 (96) and VGG (224), each with its wall time (compile
# included), and ResNet-18's once more in bfloat16 for the accuracy effect.
#
# Run from the repository root, with jaxcnn importable (pip install -e '.[cuda12]', or
# PYTHONPATH=. where jax with CUDA is already installed) and the Fashion-MNIST files reachable
# (--data-dir, JAXCNN_FASHION_MNIST, tfds's manual dir, or Debian's package):
#
#     bash experiments/gpu_suite.sh OUTDIR
#
# Writes OUTDIR/{devices.txt,bench*.json,bench*.txt,resnet18-book*/,vgg-book/,*.log}.
set -euo pipefail
out="${1:-runs/gpu-suite}"
mkdir -p "$out"
python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())" \
    | tee "$out/devices.txt"
for dtype in float32 bfloat16; do
    python3 -m jaxcnn bench lenet resnet18 vgg --dtype "$dtype" --json "$out/bench-$dtype.json" \
        2>&1 | tee "$out/bench-$dtype.txt"
done
run() {   # NAME MODEL [FLAGS]: the book's recipe for MODEL, timed
    local name=$1 model=$2 start
    shift 2
    start=$(date +%s)
    python3 -m jaxcnn train "$model" --workdir "$out/$name" --checkpoint-every 0 "$@" \
        2>&1 | tee "$out/$name.log"
    echo "$name: $(( $(date +%s) - start )) s wall, compile included" | tee -a "$out/$name.log"
}
run resnet18-book resnet18
run vgg-book vgg
run resnet18-book-bf16 resnet18 --dtype bfloat16
