"""What a generated activation costs in a training step, against nn.GELU.

    PYTHONPATH=. python bench/activation_in_training.py              # vit-nano, batch 128, CPU
    EAFO_NATIVE_KERNELS=0 PYTHONPATH=. python bench/activation_in_training.py   # op by op
    PYTHONPATH=. python bench/activation_in_training.py --fused      # use_compiled_kernels()
    PYTHONPATH=. python bench/activation_in_training.py --model vit-tiny --device cuda --batch-size 256

One optimizer step (forward, cross-entropy, backward, AdamW) of the same model
preset with nn.GELU and with generated modules (a plain base, CRReLU, the gelu
correction), on one fixed random batch. Variants are interleaved, one step of each
per round, and each figure is the median over rounds, so load from other
processes hits all alike. Prints one JSON object with ms per step and the ratio
to nn.GELU measured in the same run. On the CPU in float32 the generated modules
run our C kernels (forward and backward each one fused kernel) unless
EAFO_NATIVE_KERNELS=0; with --fused they run with `use_compiled_kernels()` (the C
kernels again where they run, else torch.compile's: the first steps compile). On the CPU, glibc keeps freed buffers (`bench/allocator.py`),
so no variant pays page faults for memory another one handed back to the OS; the
page faults per step that were left are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import spaces  # noqa: E402
from spaces.codegen import module_of  # noqa: E402
from bench.allocator import keep_freed_memory, page_faults  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402
from evaluators.models import build_model, get_preset  # noqa: E402


def activations() -> dict[str, type]:
    return {
        "nn.GELU": torch.nn.GELU,
        "generated gelu": spaces.parse("gelu(x)").module_class(),
        "generated crrelu": spaces.BASELINES["crrelu"].module_class(),
        "generated gelu + eps*x*exp(-x**2/2)": spaces.parse(
            "gelu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"]).module_class(),
    }


def measure(acts: dict[str, type], model_name: str, batch_size: int, size: int, rounds: int,
            device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds and page faults per optimizer step for each activation, `rounds`
    interleaved samples."""
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(batch_size, 1, size, size, generator=gen).to(device)
    yb = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    steps = {}
    for name, act in acts.items():
        torch.manual_seed(0)
        model = build_model(model_name, act_layer=act, in_chans=1, num_classes=10, img_size=size).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps[name] = step
    for step in steps.values():  # warm-up (and, with --fused, compilation)
        for _ in range(5):
            step()
    times, faults = {name: [] for name in steps}, {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            f0, t0 = page_faults(), time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)
            faults[name].append(page_faults() - f0)
    return times, faults


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-nano")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=None, help="default: the preset's own")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fused", action="store_true", help="generated modules use_compiled_kernels()")
    ap.add_argument("--malloc", default="kept", choices=["kept", "default"],
                    help="kept (default): glibc keeps freed buffers (no page faults for another "
                         "variant's frees); default: glibc as it comes")
    args = ap.parse_args(argv)
    allocator = keep_freed_memory() if args.malloc == "kept" else "default"

    device = torch.device(args.device)
    size = args.image_size or get_preset(args.model).img_size or 28
    acts = activations()
    # Generated classes are shared (cached per candidate): switch them back when done.
    switches = [module_of(a).use_compiled_kernels for n, a in acts.items()
                if args.fused and n.startswith("generated")]
    for use_compiled_kernels in switches:
        use_compiled_kernels(True)
    try:
        times, faults = measure(acts, args.model, args.batch_size, size, args.rounds, device)
        cpu32 = device.type == "cpu"  # (the models train in float32)
        kernels = {n: module_of(a).kernel_info()["float32_cpu" if cpu32 else "other"]
                   for n, a in acts.items() if n.startswith("generated")}
    finally:
        for use_compiled_kernels in switches:
            use_compiled_kernels(False)
    ref = statistics.median(times["nn.GELU"])
    out = {
        "model": args.model, "batch_size": args.batch_size, "image_size": size, "device": device.type,
        "threads": torch.get_num_threads(), "rounds": args.rounds, "fused": args.fused,
        # float32 CPU modules run our C kernels unless EAFO_NATIVE_KERNELS=0 (then op by op,
        # or torch.compile's kernels with --fused)
        "c_kernels": os.environ.get("EAFO_NATIVE_KERNELS", "1") != "0",
        "kernels": kernels,  # what each generated module's autograd.Function ran (its kernel_info())
        "allocator": allocator,
        "versions": {"torch": torch.__version__, "python": platform.python_version()}, "cpu": describe_cpu(),
        "ms_per_step": {n: round(statistics.median(t) * 1e3, 3) for n, t in times.items()},
        "ratio_vs_gelu": {n: round(statistics.median(t) / ref, 3) for n, t in times.items()},
        "page_faults_per_step": {n: statistics.median(f) for n, f in faults.items()},
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
