"""Training throughput of ProxyTask against a bare timm training loop, measured in one run.

    PYTHONPATH=. python bench/train_throughput.py                 # vit-nano, 10k Fashion-MNIST, CPU
    PYTHONPATH=. python bench/train_throughput.py --device cuda --model vit-tiny --train-size 50000

Both loops train the same model (same preset, same candidate activation) on the same
device tensors with the same batch size; the bare loop is the ~10 lines below (no
schedule, clipping, divergence checks or reporting). Runs alternate (harness, bare,
harness, bare, ...) so that load from other processes hits both alike. Each side's
figure is the best (and the median) over runs of the training samples/s of every
epoch after the first (warm-up): on a shared machine the best epoch is the one least
disturbed by others, as timeit takes the minimum time. With --threads 1 the
samples per CPU second ("cpu_time_ratio") are also compared, which load from other
processes hardly moves. Target: harness >= 90% of bare. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spaces  # noqa: E402
from evaluators import ProxyTask  # noqa: E402

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])


def bare_loop(task: ProxyTask, candidate, epochs: int, seed: int) -> tuple[list[float], list[float]]:
    """Samples per wall second and per CPU second, each epoch, of the plainest loop."""
    device = task.resolve_device()
    data = task.load_split("val", device)
    torch.manual_seed(seed)
    model = task.build(candidate, data)
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    n, bs = data.train_x.shape[0], task.batch_size
    rates, cpu_rates = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(n, device=device)
        model.train()
        for i in range(n // bs):
            idx = perm[i * bs:(i + 1) * bs]
            with amp:
                loss = F.cross_entropy(model(data.train_x[idx]).float(), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()  # wait for the device before stopping the clock
        rates.append((n // bs) * bs / (time.perf_counter() - t0))
        cpu_rates.append((n // bs) * bs / (time.process_time() - c0))
    return rates, cpu_rates


def harness(task: ProxyTask, candidate, seed: int):
    """Wall samples/s and train seconds per epoch (the harness's own figures), and
    samples per CPU second of each epoch after the first, from report-to-report CPU
    time (which includes the evaluation of the small --val-size split)."""
    marks = []
    result = task.evaluate(candidate, seed=seed, report=lambda epoch, m: marks.append(time.process_time()))
    if not result.ok:
        raise SystemExit(f"harness run did not finish: {result.status} {result.reason}")
    images = result.history[0]["samples_per_s"] * result.history[0]["train_seconds"]
    cpu = [images / (b - a) for a, b in zip(marks, marks[1:])]
    return [h["samples_per_s"] for h in result.history], [h["train_seconds"] for h in result.history], cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-nano")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--val-size", type=int, default=100,
                    help="harness evaluates on it each epoch (outside its wall timing, inside the CPU timing)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up")
    ap.add_argument("--runs", type=int, default=4, help="alternating harness/bare pairs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    task = ProxyTask(dataset=args.dataset, model=args.model, epochs=args.epochs, train_size=args.train_size,
                     val_size=args.val_size, batch_size=args.batch_size, device=args.device,
                     image_size=args.image_size, data_root=args.data_root)
    task.load_split("val")  # load and decode outside the clock
    ours, bare, epoch_seconds, ours_cpu, bare_cpu = [], [], [], [], []
    for run in range(args.runs):
        rates, seconds, cpu = harness(task, CRRELU, seed=run)
        ours += rates[1:]
        epoch_seconds += seconds[1:]
        ours_cpu += cpu
        rates, cpu = bare_loop(task, CRRELU, args.epochs, seed=run)
        bare += rates[1:]
        bare_cpu += cpu[1:]
    h, b = max(ours), max(bare)
    out = {
        "harness_samples_per_s": round(h, 1),
        "bare_samples_per_s": round(b, 1),
        "ratio": round(h / b, 3),
        "target_ratio": 0.9,
        "median_ratio": round(statistics.median(ours) / statistics.median(bare), 3),
        # samples per CPU second: insensitive to other processes when --threads 1
        "cpu_time_ratio": round(statistics.median(ours_cpu) / statistics.median(bare_cpu), 3),
        "harness_train_seconds_per_epoch_best": round(min(epoch_seconds), 3),
        "harness_train_seconds_per_epoch_median": round(statistics.median(epoch_seconds), 3),
        "harness_all": [round(r, 1) for r in ours],
        "bare_all": [round(r, 1) for r in bare],
        "harness_per_cpu_s": [round(r, 1) for r in ours_cpu],
        "bare_per_cpu_s": [round(r, 1) for r in bare_cpu],
        "config": {**{k: v for k, v in vars(args).items()}, "activation": CRRELU.formula},
        "device": str(task.resolve_device()),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
