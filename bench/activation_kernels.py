"""Forward+backward time and memory saved for backward of generated activations vs nn.GELU.

    PYTHONPATH=. python bench/activation_kernels.py                  # CPU, ~2-3 min on 2 cores
    PYTHONPATH=. python bench/activation_kernels.py --quick          # a few seconds, eager only
    PYTHONPATH=. python bench/activation_kernels.py --device cuda --markdown

Activations: CRReLU, three other candidates (a GELU and a SiLU correction, a
unary_binary mix) and CRReLU exported by `search.export` from a synthetic study folder,
twice: with `--native` (the fused C kernels, as the engine runs it) and as it is by
default (plain PyTorch), both loaded back through `spaces.get_activation`; references
nn.GELU and nn.SiLU. Each row says which kernels ran (the module's `kernel_info()`).

Modes, each timed as y = act(x); autograd.grad(y, [x, *coefficients], g):
- naive:    the plain generated function (`<name>(x, **coefficients)`): one torch op per
            node, differentiated op by op by autograd, which saves every intermediate;
- eager:    the module as it comes (its autograd.Function: saves only x, backward = sympy
            derivative); float32 on the CPU: our C kernels (`spaces.kernels.c_loader`), one
            fused kernel each way, where the form has them and a compiler builds them (the
            default export has none: in-place ops);
- eager_ops: (CPU float32) the same after use_native_kernels(False): op by op, in place;
- fused:    the module with `use_compiled_kernels()` (float32 on the CPU: the C kernels
            again; elsewhere torch.compile's kernels);
- fused_inductor: (CPU float32) the same after use_native_kernels(False): torch.compile's kernels;
- compiled: `torch.compile(module, fullgraph=True)` (the references: compiled nn.GELU/SiLU).

Every time is a ratio against nn.GELU measured in the same run, in the same mode family
(eager modes vs eager nn.GELU, compiled vs compiled nn.GELU). Variants are interleaved
(one sample of each, round after round, in a new random order each round), and each
figure is the median over rounds, so load from other processes hits all alike. CUDA is synchronised before and after each
sample. On the CPU, glibc is told to keep freed buffers (`bench/allocator.py`): else
whichever variant finds its buffers returned to the OS pays ~1 us per 4 KB page to fault
them in again, which swung identical kernels from 0.66x to 1.26x nn.GELU in one run;
each row reports the page faults per iteration that were left (`--malloc default` to
see them). Bytes saved for backward are counted with saved_tensors_hooks (distinct
storages), also in "inputs' worth" (bytes / x's bytes); coefficients are 0-dim (4 bytes each).

Targets (pass/fail in the output): saved bytes = one input (the naive CRReLU makes 7
saves, ~7 inputs' worth counted per save, 4 distinct buffers); eager (and fused) time <= 1.2x
nn.GELU; compiled time <= 1.2x compiled nn.GELU. Compiling (fused, compiled) costs
~5-20 s per variant on 2 CPU cores the first time (inductor caches it on disk after).
Prints one JSON object (and a markdown table with --markdown).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import spaces  # noqa: E402
from spaces.codegen import module_of  # noqa: E402
from bench.allocator import keep_freed_memory, page_faults  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402

TARGET_RATIO = 1.2


def candidates() -> dict[str, spaces.Candidate]:
    ub = spaces.get_space("unary_binary").build(
        {"binary": "mix", "unary1": "gelu", "unary2": "tanh", "beta_init": 0.8, "beta_learnable": True})
    return {
        "crrelu": spaces.BASELINES["crrelu"],
        "gelu_cr": spaces.parse("gelu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"]),
        "silu_hermite2": spaces.parse("silu(x) + eps*(x**2 - 1)*exp(-x**2/2)", init={"eps": 0.01},
                                      learnable=["eps"]),
        "ub_mix_gelu_tanh": ub,
    }


def exported_classes(folder: Path) -> dict[str, type]:
    """Export CRReLU (learned eps) from a synthetic study folder, with --native and without;
    load both via the registry."""
    from search.export import export_activation

    c = spaces.BASELINES["crrelu"]
    study = folder / "runs" / "bench"
    study.mkdir(parents=True)
    (study / "best.json").write_text(json.dumps({
        "study": "bench", "label": "crrelu_exported", "candidate": c.to_dict(), "params": None,
        "fingerprint": c.fingerprint, "learned_coefficients": {"eps": -0.2},
        "confirmed": None, "vs_gelu": None, "versions": {}, "created": "synthetic"}))
    export_activation(study, folder / "acts", learned=True, native=True)
    out = export_activation(study, folder / "acts", name="crrelu_exported_plain", learned=True)
    spaces.register_path(out.parent)
    return {n: spaces.get_activation(n) for n in ("crrelu_exported", "crrelu_exported_plain")}


# ---- measurement -----------------------------------------------------------------------

def saved_bytes(fn, x: torch.Tensor) -> tuple[int, int, int]:
    """(bytes of distinct storages, tensors, bytes counting every saved tensor) that
    autograd saves for backward during fn(x). The distinct count is the memory cost; the
    other two show how often one buffer (x, say) is saved by several ops."""
    storages, count, total = {}, 0, 0

    def pack(t):
        nonlocal count, total
        s = t.untyped_storage()
        storages[(s.data_ptr(), t.device)] = s.nbytes()
        count += 1
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(storages.values()), count, total


class Variant:
    """One (activation, mode) to time. `module`: the generated module, whose switches are
    set only while this variant runs (the variants of one class share its kernels):
    `compiled` turns use_compiled_kernels() on, `native_off` use_native_kernels() off."""

    def __init__(self, name, mode, fn, params, formula, module=None, compiled=False, native_off=False):
        self.name, self.mode, self.fn, self.params, self.formula = name, mode, fn, params, formula
        self.module, self.compiled, self.native_off = module, compiled, native_off
        self.times: list[float] = []
        self.faults: list[float] = []  # page faults per iteration, one entry per sample
        self.warmup_s = None
        self.saved = self.saved_tensors = self.saved_total = None
        self.kernels_kind = None  # what kernel_info() said ran (eager modes of generated modules)

    @contextmanager
    def active(self):
        if self.native_off:
            self.module.use_native_kernels(False)
        if self.compiled:
            self.module.use_compiled_kernels(True)
        try:
            yield
        finally:
            if self.compiled:
                self.module.use_compiled_kernels(False)
            if self.native_off:
                self.module.use_native_kernels(True)

    def record_kernels(self, x):
        """Which kernels the module's autograd.Function runs for x, as kernel_info() says."""
        if self.module is not None and self.mode != "naive":
            with self.active():
                info = self.module.kernel_info()
            cpu32 = x.device.type == "cpu" and x.dtype == torch.float32
            self.kernels_kind = info["under_torch_compile"] if self.mode == "compiled" else \
                info["float32_cpu" if cpu32 else "other"]

    def run(self, x, g, n: int, sync) -> float:
        with self.active():
            sync()
            f0, t0 = page_faults(), time.perf_counter()
            for _ in range(n):
                y = self.fn(x)
                torch.autograd.grad(y, [x, *self.params], g)
            sync()
            t = (time.perf_counter() - t0) / n
            self.faults.append((page_faults() - f0) / n)
            return t

    def measure_saved(self, x):
        with self.active():
            self.saved, self.saved_tensors, self.saved_total = saved_bytes(self.fn, x)


def variants_for(name: str, cls: type, modes: list[str], device, dtype) -> list[Variant]:
    module = module_of(cls)
    mod = cls().to(device=device, dtype=dtype)
    params = [p for _, p in mod.named_parameters()]
    names = [n for n, _ in mod.named_parameters()]
    formula = module.FORMULA
    plain = getattr(module, module.__all__[0])
    fused_cpu = device.type == "cpu" and dtype == torch.float32 and hasattr(module, "use_native_kernels")
    out = []
    if "naive" in modes:
        out.append(Variant(name, "naive", lambda x: plain(x, **dict(zip(names, params))), params, formula))
    if "eager" in modes:
        out.append(Variant(name, "eager", mod, params, formula, module))
    if "eager_ops" in modes and fused_cpu:
        out.append(Variant(name, "eager_ops", mod, params, formula, module, native_off=True))
    if "fused" in modes:
        out.append(Variant(name, "fused", mod, params, formula, module, compiled=True))
    if "fused_inductor" in modes and fused_cpu:
        out.append(Variant(name, "fused_inductor", mod, params, formula, module, compiled=True, native_off=True))
    if "compiled" in modes:
        out.append(Variant(name, "compiled", torch.compile(mod, fullgraph=True), params, formula, module))
    return out


def reference_variants(modes, device, dtype) -> list[Variant]:
    out = []
    for name, m in (("nn.GELU", torch.nn.GELU()), ("nn.SiLU", torch.nn.SiLU())):
        if modes & {"naive", "eager", "eager_ops", "fused", "fused_inductor"}:
            out.append(Variant(name, "eager", m, [], name))
        if "compiled" in modes:
            out.append(Variant(name, "compiled", torch.compile(m, fullgraph=True), [], name))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--shape", default=None,
                   help="tensor shape, e.g. 64x197x768 (default: that on CUDA, 16x197x768 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (median taken)")
    p.add_argument("--modes", default=None,
                   help="comma list of naive,eager,eager_ops,fused,fused_inductor,compiled")
    p.add_argument("--quick", action="store_true", help="small tensor, few rounds, eager modes only")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table")
    p.add_argument("--malloc", default="kept", choices=["kept", "default"],
                   help="kept (default): glibc keeps freed buffers, so no variant pays page faults "
                        "for another's frees; default: glibc as it comes")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    if args.quick:
        shape, repeats, modes = (2, 197, 768), args.repeats or 3, ["naive", "eager", "eager_ops"]
    else:
        shape = (64, 197, 768) if cuda else (16, 197, 768)
        repeats, modes = args.repeats or (15 if cuda else 7), ["naive", "eager", "eager_ops", "fused",
                                                               "fused_inductor", "compiled"]
    if args.shape:
        shape = tuple(int(s) for s in args.shape.lower().split("x"))
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",")]
        bad = set(modes) - {"naive", "eager", "eager_ops", "fused", "fused_inductor", "compiled"}
        if bad:
            print(f"error: unknown mode(s) {sorted(bad)}", file=sys.stderr)
            return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    allocator = keep_freed_memory() if args.malloc == "kept" else "default"
    tmp = tempfile.TemporaryDirectory(prefix="eafo-bench-")
    acts = {n: c.module_class() for n, c in candidates().items()}
    acts.update(exported_classes(Path(tmp.name)))
    variants = reference_variants(set(modes), device, dtype)
    for name, cls in acts.items():
        variants += variants_for(name, cls, modes, device, dtype)

    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(shape, device=device, dtype=dtype)
    # Inner iterations per sample: enough that one sample of nn.GELU takes ~20 ms.
    gelu = variants[0]
    one = min(gelu.run(x, g, 1, sync) for _ in range(5))
    inner = max(1, min(50, round(0.02 / max(one, 1e-6))))

    for v in variants:  # warm-up (compiles here), then bytes saved for backward
        t0 = time.perf_counter()
        for _ in range(3):
            v.run(x, g, 1, sync)
        v.warmup_s = round(time.perf_counter() - t0, 2)
        v.measure_saved(x)
        v.record_kernels(x)
    for v in variants:
        v.faults.clear()  # warm-up and the memory count touched fresh memory on purpose
    order = random.Random(0)
    for _ in range(repeats):
        # a new order each round: a variant right after a memory-hungry one (naive, eager_ops)
        # starts with colder caches; in a fixed order that cost the same variant every round
        # (the C kernels read 0.99x nn.GELU after the naive row, 0.89x after another)
        for v in order.sample(variants, len(variants)):
            v.times.append(v.run(x, g, inner, sync))

    med = {(v.name, v.mode): statistics.median(v.times) for v in variants}
    ref_eager = med.get(("nn.GELU", "eager"))
    ref_compiled = med.get(("nn.GELU", "compiled"))
    x_bytes = x.numel() * x.element_size()
    rows = []
    for v in variants:
        t = med[(v.name, v.mode)]
        ref = ref_compiled if v.mode == "compiled" else ref_eager
        rows.append({
            "activation": v.name, "mode": v.mode, "formula": v.formula, "kernels": v.kernels_kind,
            "time_ms": round(t * 1e3, 3),
            "ratio_vs_gelu": round(t / ref, 3) if ref else None,
            "ratio_vs_eager_gelu": round(t / ref_eager, 3) if ref_eager else None,
            "saved_bytes": v.saved,
            "saved_inputs": round(v.saved / x_bytes, 3),
            "saved_tensors": v.saved_tensors,  # how many saves, one buffer counted each time
            "saved_inputs_counting_repeats": round(v.saved_total / x_bytes, 3),
            "warmup_s": v.warmup_s,
            "page_faults_per_iteration": round(statistics.median(v.faults), 1),
        })
    targets = {}
    by = {(r["activation"], r["mode"]): r for r in rows}
    for name in acts:
        t = {}
        e = by.get((name, "eager")) or by.get((name, "fused"))
        if e:
            # one input's worth, plus the 0-dim coefficients (a few bytes each)
            t["saved_one_input"] = x_bytes <= e["saved_bytes"] <= x_bytes + 64
        for mode in ("eager", "eager_ops", "fused", "fused_inductor", "compiled"):
            r = by.get((name, mode))
            if r and r["ratio_vs_gelu"] is not None:
                t[f"{mode}_le_{TARGET_RATIO}x_gelu"] = r["ratio_vs_gelu"] <= TARGET_RATIO
        n = by.get((name, "naive"))
        if n:
            t["naive_saved_inputs"] = n["saved_inputs"]
        targets[name] = t

    result = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "device_type": device.type, "dtype": args.dtype, "shape": list(shape),
        "input_bytes": x_bytes, "threads": torch.get_num_threads(), "repeats": repeats,
        "inner_iterations": inner, "allocator": allocator,
        "versions": {"torch": torch.__version__, "python": platform.python_version()}, "cpu": describe_cpu(),
        "rows": rows, "targets": targets,
    }
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(rows, result))
    tmp.cleanup()
    return 0


def markdown(rows, result) -> str:
    lines = [f"\n{result['device_type']} {result['dtype']} {'x'.join(map(str, result['shape']))}, "
             f"{result['threads']} threads, median of {result['repeats']} rounds x "
             f"{result['inner_iterations']} iterations; ratio vs nn.GELU in the same mode family; "
             f"allocator: {result['allocator']}",
             "", "| activation | mode | ms fwd+bwd | x nn.GELU | saved (inputs) | page faults / iter |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        saved = f"{r['saved_inputs']:.2f} ({r['saved_tensors']} saves)"
        lines.append(f"| {r['activation']} | {r['mode']} | {r['time_ms']:.2f} | "
                     f"{r['ratio_vs_gelu']:.2f} | {saved} | {r['page_faults_per_iteration']:g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
