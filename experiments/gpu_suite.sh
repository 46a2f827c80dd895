#!/usr/bin/env bash
# Every GPU check as one prepared script for one lent GPU (about 8 minutes of running), in the
# order they matter, each part inside a budget of its own:
#   1. every registry model's book recipe for 10 epochs, three runs at a time on the one GPU,
#      then a table: val_acc against the book's, wall time, images/s, TFLOP/s and the share of
#      the H200's measured 790 TFLOP/s bf16 matrix rate (model FLOPs: 6 x forward MACs);
#   2. `jaxcnn bench lenet resnet18 vgg` in float32 and bfloat16 against the book's PyTorch
#      models with their defaults and tuned (channels_last, bf16 autocast, cudnn.benchmark,
#      TF32, torch.compile), and with 1, 8 and 32 steps per dispatch;
#   3. LeNet's book recipe over 20 seeds in one vmapped command, beside one seed;
#   4. with the time left: the test suite on the GPU.
# Each part runs under `timeout` with what is left of the budget; a part that fails or is cut
# does not stop the next, and its log and the summary say how it ended. A cut training keeps
# its completed epochs in metrics.jsonl.
#
# Run from the repository root, with jaxcnn importable (pip install -e '.[cuda13,bench]', or
# PYTHONPATH=. where jax with CUDA is already installed) and the Fashion-MNIST files reachable
# (--data-dir, JAXCNN_FASHION_MNIST, tfds's manual dir, or Debian's package):
#
#     bash experiments/gpu_suite.sh OUTDIR [BUDGET_S [TRAIN_CAP_S]]
#
# BUDGET_S: seconds for the whole script (default 600); TRAIN_CAP_S: at most this many for the
# training part (default 300), so that the benchmark keeps its share. SUITE_TRAIN_ARGS: extra
# `jaxcnn train` flags for a reduced rehearsal (e.g. "--epochs 1 --train-examples 1280
# --test-examples 1000"); SUITE_BENCH_ARGS likewise for the bench (e.g. "--repeats 1 --steps 2").
# Writes OUTDIR/{summary.txt,devices.txt,chapter.md,*.log,bench-*.json,book-MODEL/,seeds/}.
set -uo pipefail
out="${1:-runs/gpu-suite}"
deadline=$(( $(date +%s) + ${2:-600} ))
train_cap=${3:-300}
mkdir -p "$out"
export JAXCNN_REPORT=0            # the runs' HTML reports are not what this script is for

limit() {   # CAP_S: CAP_S or the budget left (less a margin), whichever is smaller
    local left=$(( deadline - $(date +%s) - 10 ))
    echo $(( left < $1 ? left : $1 ))
}
part() {    # NAME CAP_S COMMAND...: run under timeout, log to NAME.log, note how it ended
    local name=$1 cap start rc
    cap=$(limit "$2")
    shift 2
    if (( cap < 15 )); then
        echo "$name: skipped, budget spent" | tee -a "$out/summary.txt"
        return
    fi
    start=$(date +%s)
    timeout -k 5 "$cap" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc$( (( rc == 124 || rc == 137 )) && echo " (cut at ${cap} s)"), \
$(( $(date +%s) - start )) s wall" | tee -a "$out/summary.txt"
}
lane() {    # CAP_S MODEL...: the book recipes of MODELs, one after another
    local cap=$1 model
    shift
    for model in "$@"; do
        # shellcheck disable=SC2086  # SUITE_TRAIN_ARGS is a list of flags
        part "book-$model" "$cap" python3 -m jaxcnn train "$model" --workdir "$out/book-$model" \
            --checkpoint-every 0 ${SUITE_TRAIN_ARGS:-}
    done
}

{ python3 -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', \
jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
} > "$out/devices.txt" 2>&1
cat "$out/devices.txt"
part prepare-data 120 python3 -c "from jaxcnn import data; data.fashion_mnist('train')"

# 1. The chapter: three lanes share the GPU, each taking at most 30 % of its memory; the
# lanes are balanced by the CPU- and H200-measured costs (the 224 px models are the heavy ones).
nvidia-smi dmon -s u -d 5 > "$out/gpu-utilization.txt" 2>&1 &
dmon=$!
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
chapter_start=$(date +%s)
lane "$train_cap" vgg lenet bn_lenet bn_lenet_scratch &
a=$!
lane "$train_cap" alexnet nin resnet18 &
b=$!
lane "$train_cap" vgg11 googlenet resnext densenet regnetx32 &
wait "$a" "$b" $!
unset XLA_PYTHON_CLIENT_MEM_FRACTION
kill "$dmon" 2>/dev/null
echo "chapter: all 12 models in $(( $(date +%s) - chapter_start )) s wall" | tee -a "$out/summary.txt"
python3 - "$out" > "$out/chapter.md" <<'EOF'
"""The chapter's table from each run's metrics.jsonl and the models' multiply-adds."""
import json, sys
from pathlib import Path
from jaxcnn import models, summary
from flax import nnx
BOOK = {"lenet": "0.73-0.74", "vgg": "0.89-0.90", "resnet18": "0.90-0.91"}   # RESULTS.md
PEAK = 790e12      # the H200's measured bf16 matrix rate (device/H200.md)
print("| model | val_acc | book | epochs | wall s | train img/s | TFLOP/s | of 790 |")
print("|---|---|---|---|---|---|---|---|")
for run in sorted(p for p in Path(sys.argv[1]).glob("book-*") if p.is_dir()):
    name = run.name[5:]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").exists() else []
    if not rows:
        print(f"| {name} | (no epoch finished) | {BOOK.get(name, '')} | 0 | | | | |")
        continue
    size = json.loads((run / "config.json").read_text())["image_size"]
    model = nnx.eval_shape(lambda: models.create(name, image_size=size))
    macs = summary.layer_summary(model, (1, size, size, 1), print_fn=None)[-1].macs
    rate = sorted(r["images_per_s"] for r in rows)[len(rows) // 2]
    flops = 6 * macs * rate
    print(f"| {name} | {rows[-1]['val_acc']:.4f} | {BOOK.get(name, '')} | {len(rows)} | "
          f"{sum(r['seconds'] for r in rows):.0f} | {rate:,.0f} | {flops / 1e12:.1f} | "
          f"{flops / PEAK:.1%} |")
EOF
cat "$out/chapter.md"

# 2. The benchmark, nothing else running.
# shellcheck disable=SC2086
part bench-float32-default 120 python3 -m jaxcnn bench lenet resnet18 vgg \
    --compare-torch default --json "$out/bench-float32-default.json" ${SUITE_BENCH_ARGS:-}
# shellcheck disable=SC2086
part bench-float32-tuned 150 python3 -m jaxcnn bench lenet resnet18 vgg \
    --compare-torch tuned --json "$out/bench-float32-tuned.json" ${SUITE_BENCH_ARGS:-}
# shellcheck disable=SC2086
part bench-bfloat16-tuned 120 python3 -m jaxcnn bench lenet resnet18 vgg --dtype bfloat16 \
    --compare-torch tuned --json "$out/bench-bfloat16-tuned.json" ${SUITE_BENCH_ARGS:-}
for k in 1 8 32; do     # K steps a dispatch, the data on the device: LeNet's epoch, timed
    part "dispatch-$k" 60 python3 -c "
import time
from jaxcnn import config, train
cfg = config.recipe('lenet', epochs=2, checkpoint_every=0)
history = train.fit(cfg, '$out/dispatch-$k', force_new=True, steps_per_dispatch=$k)
print('steps_per_dispatch $k: epoch 2 at', round(history[-1]['images_per_s']), 'img/s')"
done

# 3. Many seeds at once: 20 LeNet seeds vmapped, beside one.
# shellcheck disable=SC2086
part seeds-1 60 python3 -m jaxcnn train lenet --seed 0 --workdir "$out/seeds-one" \
    --checkpoint-every 0 ${SUITE_TRAIN_ARGS:-}
# shellcheck disable=SC2086
part seeds-20 120 python3 -m jaxcnn train lenet --seeds 0-19 --seeds-mode vmap \
    --workdir "$out/seeds" --checkpoint-every 0 ${SUITE_TRAIN_ARGS:-}

# 4. The tests start processes of their own: none may take 75 % of the GPU's memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
part tests 1800 python3 -m pytest -q -rf -p no:cacheprovider -x tests
cat "$out/summary.txt"
