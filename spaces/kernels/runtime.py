"""The part of every generated activation module that is the same for every formula.

A generated module (`spaces.codegen`) holds this file's text (`spaces.kernels.inline`),
prints its formula's kernels as plain functions, and binds them here:

    _KERNELS = _Kernels(_f_fwd, _f_bwd, _f_eager_fwd, _f_eager_bwd, fused)

Its nn.Module asks `_KERNELS.plain_ops_wanted(x)` first: where that holds (traced,
scripted, exported, compiled, no gradient), forward computes the formula as plain torch
ops, so every tool sees real operators (a C call would be a constant to a tracer, the
autograd.Function an op no exporter knows). Otherwise it applies its autograd.Function,
which saves only x and calls `_KERNELS.forward` / `_KERNELS.backward`: the exact kernels
where autograd records the backward (create_graph=True), else the in-place ones, or
torch.compile'd ones after `use_compiled_kernels()`. `fused` (a module built with fused
float32 CPU kernels: `spaces.kernels.fused_cpu`) runs float32 CPU tensors instead.

Every top-level name starts with an underscore: in a generated module they share one
namespace with the user's names, which never start with one (spaces.parse.check_name).
"""
import torch


def _cpu_kernel_options():
    # - multiply-adds contracted to FMAs (inductor's default keeps them apart to match
    #   eager bit for bit): ~25% faster for these polynomial kernels;
    # - 256-bit vectors where inductor would pick 512-bit ones. On a 2-vCPU Xeon with
    #   AVX-512 (one 512-bit FMA unit: 2.6 zmm FMAs/ns against 6.0 ymm), CRReLU's kernels
    #   took 1.9x nn.GELU's with zmm and 1.2x with ymm. Also, in AVX-512 code inductor
    #   writes each select as four instructions (mask, vector, mask, blend), and GCC
    #   stores exp's 2**n in two halves that one 512-bit load reads back (a failed store
    #   forward each element); with ymm a select is two and the 2**n stays in a register.
    options = {"cpp.enable_floating_point_contract_flag": "fast"}
    try:
        from torch._inductor import cpu_vec_isa
        widths = {isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}
        if cpu_vec_isa.pick_vec_isa().bit_width() == 512 and 256 in widths:
            options["cpp.simdlen"] = 256
    except Exception:  # noqa: BLE001 - another torch's inductor: its own defaults
        pass
    return options


def _compile_kernel(f):
    try:
        return torch.compile(f, fullgraph=True, options=_cpu_kernel_options())
    except RuntimeError:  # a torch whose inductor lacks one of the options
        return torch.compile(f, fullgraph=True)


# torch.compiler.is_exporting arrived in torch 2.6; before, a non-strict export (the
# default) still shows as compiling with FakeTensor inputs, which plain_ops_wanted sees
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _is_low_precision(x):
    return x.dtype in (torch.float16, torch.bfloat16)


class _Kernels:
    """One activation's kernels, and which of them a call runs.

    fwd(x, *c) -> y and bwd(x, *c, g) -> (dx, *dc): the exact forms as plain torch ops;
    eager_fwd / eager_bwd: the same with in-place ops (only where nothing records);
    fused: a `_FusedCpuKernels` for float32 CPU tensors, or None.
    """

    def __init__(self, fwd, bwd, eager_fwd, eager_bwd, fused=None):
        self.plain = {"fwd": fwd, "bwd": bwd}
        self.eager = {"fwd": eager_fwd, "bwd": eager_bwd}
        self.fused = fused
        self.compiled = None  # torch.compile'd plain kernels while use_compiled(True)
        self._compiled_once = None  # kept when switched off: switching back costs nothing

    def plain_ops_wanted(self, x):
        """Whether forward must compute the formula as plain torch ops instead of applying
        the autograd.Function: under torch.jit.trace (TorchScript's ONNX exporter traces
        so) and torch.export (the dynamo ONNX exporter exports so), for inputs that are
        no plain tensor (an export's FakeTensor, an fx Proxy), and, without fused kernels,
        under torch.compile or where no gradient is recorded. (torch.onnx.is_in_onnx_export
        adds nothing to the first two and costs ~1.7 us a call.)"""
        if torch.jit.is_tracing() or _is_exporting() or type(x) is not torch.Tensor:
            return True
        if self.fused is None:
            return torch.compiler.is_compiling() or not torch.is_grad_enabled()
        return False

    def use_compiled(self, enabled=True):
        """Fuse forward and backward into one kernel each with torch.compile (the first call
        compiles, other shapes may take more), where fused float32 CPU kernels do not
        already run: C kernels run whenever they build, with or without this switch."""
        if enabled and self._compiled_once is None:
            self._compiled_once = {name: _compile_kernel(k) for name, k in self.plain.items()}
        self.compiled = self._compiled_once if enabled else None

    def kernel(self, name, x):
        """The kernel `name` ("fwd" or "bwd") for x, inside the autograd.Function."""
        if self.fused is not None and x.dtype == torch.float32 and x.is_cpu:
            k = self.fused.kernel(name, self.compiled is not None)
            if k is not None:
                return k
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self.plain[name]  # traced into a graph, or a backward with create_graph=True
        return self.eager[name] if self.compiled is None else self.compiled[name]

    # forward(ctx, ...) in the Function rather than forward + setup_context: on 2 CPU
    # cores the latter cost ~50 us more per call, 0.2-0.35 ms per forward+backward of a
    # 16x197x768 tensor (no .to() where the dtype is already x's: each step between two
    # kernels that stream the tensor runs on cold caches, ~45 us for a no-op .to() there)
    def forward(self, x, *coefficients):
        """The autograd.Function's forward: float16 and bfloat16 compute in float32."""
        xc = x.float() if _is_low_precision(x) else x
        y = self.kernel("fwd", xc)(xc, *coefficients)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def backward(self, g, x, *coefficients):
        """The autograd.Function's backward: (dx, *d coefficient), dx in x's dtype."""
        low = _is_low_precision(x)
        xc, gc = (x.float(), g.float()) if low else (x, g)
        dx, *dc = self.kernel("bwd", xc)(xc, *coefficients, gc)
        return (dx if dx.dtype == x.dtype else dx.to(x.dtype), *dc)

    def info(self):
        """Which kernels this module's autograd.Function runs (in eager mode), as a dict:
        "float32_cpu" and "other" (dtypes, devices): "c" (fused C kernels),
        "torch.compile" or "in-place ops"; "compiled": use_compiled_kernels() is on;
        "under_torch_compile": what a model compiled with torch.compile runs for float32
        CPU tensors ("custom ops" around the fused kernels, or "plain ops"); "fused_cpu":
        details of the fused float32 CPU kernels (None without them). Where C kernels may
        run, this loads them (what a first call would do)."""
        other = "in-place ops" if self.compiled is None else "torch.compile"
        fused = None if self.fused is None else self.fused.info(self.compiled is not None)
        return {"float32_cpu": other if fused is None else fused["runs"] or other, "other": other,
                "compiled": self.compiled is not None,
                "under_torch_compile": "plain ops" if fused is None else "custom ops",
                "fused_cpu": fused}
