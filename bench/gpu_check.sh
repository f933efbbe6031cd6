#!/usr/bin/env bash
# One GPU check, under 8 minutes on a single H200; installs nothing, needs no network.
#
#   1. python bench/activation_kernels.py --device cuda          (at most 3 min)
#   2. one vit-tiny trial (the paper's ViT-T) on Fashion-MNIST padded 28 -> 32,
#      CRReLU, bf16 autocast, 3 epochs of 55,000 images          (at most 4 min)
#      prints seconds per epoch and peak GPU memory as JSON.
#
# Fashion-MNIST is looked for in $EAFO_DATA_ROOT, /usr/share/datasets/fashion-mnist,
# then bench/out/fashion-mnist. A device machine without the Debian package can get it
# from this tree: `mkdir -p bench/out && cp -r /usr/share/datasets/fashion-mnist bench/out/`
# here, then run with carry=["bench/out/fashion-mnist"] (about 30 MB).
#
#   bash bench/gpu_check.sh
#
# Dry run of the same code on the CPU (small sizes; checks the script, not the GPU):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TRAIN=1000 GPU_CHECK_EPOCHS=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ -z "${EAFO_DATA_ROOT:-}" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ -f bench/out/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  export EAFO_DATA_ROOT="$PWD/bench/out/fashion-mnist"
fi

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
python -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__, "available", torch.cuda.is_available())'

status=0
echo "== activation kernels"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
export GPU_CHECK_DEVICE="$DEVICE"
KERNEL_ARGS=(--device "$DEVICE")
[ "$DEVICE" = cpu ] && KERNEL_ARGS+=(--quick)
if [ -f bench/activation_kernels.py ]; then
  timeout 180 python bench/activation_kernels.py "${KERNEL_ARGS[@]}" || { echo "activation_kernels.py failed (rc=$?)"; status=1; }
else
  echo "bench/activation_kernels.py not in this tree: skipped"; status=1
fi

echo "== vit-tiny trial"
timeout 240 python - <<'EOF' || { echo "vit-tiny trial failed (rc=$?)"; status=1; }
import json
import os

import torch

import spaces
from evaluators import ProxyTask

crrelu = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
device = os.environ["GPU_CHECK_DEVICE"]
train = os.environ.get("GPU_CHECK_TRAIN")
task = ProxyTask(model="vit-tiny", image_size=32, epochs=int(os.environ.get("GPU_CHECK_EPOCHS", "3")),
                 train_size=int(train) if train else None, val_size=1000 if train else 5000,
                 batch_size=256, eval_batch_size=2500, device=device)


def report(epoch, m):
    print(f"epoch {epoch}: {m['epoch_seconds']:.2f} s ({m['train_seconds']:.2f} s training, "
          f"{m['samples_per_s']:.0f} samples/s), train_loss {m['train_loss']:.4f}, val_acc {m['val_acc']:.4f}, "
          f"eps mean {m['coef/eps_mean']:.4f}", flush=True)


task.load_split("val")  # decode and copy to the GPU outside the timed epochs
r = task.evaluate(crrelu, seed=0, report=report)
print(json.dumps({
    "status": r.status, "reason": r.reason, "val_acc": r.score,
    "seconds_per_epoch": [round(h["epoch_seconds"], 3) for h in r.history],
    "train_samples_per_s": [round(h["samples_per_s"], 1) for h in r.history],
    "peak_gpu_memory_gib": round(r.peak_memory_bytes / 2**30, 3),
    "peak_memory_kind": r.peak_memory_kind,
    "wall_seconds": round(r.wall_seconds, 1),
    "train_images": task.load_split("val").train_x.shape[0],
    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
}, indent=2))
EOF
exit $status
