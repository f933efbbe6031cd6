"""Fused float32 CPU kernels: one pass over the tensor each way, for one activation.

What a generated module built with them (the engine's modules, `--native` exports) runs
for float32 CPU tensors, from its formula's float32 forms (`spaces.kernels.forms`):
- eager: our C kernels (`spaces.kernels.c_loader`) wherever they build, whether or not
  `use_compiled_kernels()` was called (they need no compile step worth a switch: ~0.2 s
  once, cached on disk), except where autograd records the kernel (a backward with
  create_graph=True);
- where they do not build (no C form, no compiler, use_native_kernels(False)), after
  `use_compiled_kernels()`: inductor's kernels for the same forms, run over rows;
- under torch.compile of a model: two custom ops, opaque to the model's graph, that run
  the same kernels. Inductor compiles a model's graph with multiply-adds kept apart (to
  match eager bit for bit), which costs these polynomial kernels ~25%. The cost: inductor
  cannot fuse the activation with its neighbours. In a transformer MLP (Linear, act,
  Linear) it does not on the CPU anyway; a gated unit (x * act(gate)) loses one fused
  multiply. (torch.export and every tracer get plain ops instead: runtime.py.)

Every top-level name starts with an underscore (see spaces.kernels.runtime).
"""
import math

import torch

from spaces.kernels.c_loader import _CKernels
from spaces.kernels.runtime import _compile_kernel


def _free_op_name(base):
    # one name per loaded module: the same class may be loaded more than once
    n = 0
    while hasattr(torch.ops.eafo, f"{base}_{n}_fwd"):
        n += 1
    return f"eafo::{base}_{n}"


def _own_copy(f, name):
    # torch.compile keeps its compiled variants, and its limit of 8 of them, per code
    # object: each kernel gets a code object of its own (the custom ops' tensors carry
    # other dispatch keys than eager ones, which would take variants from the eager ones)
    return type(f)(f.__code__.replace(co_name=name), f.__globals__, name, f.__defaults__, f.__closure__)


def _row_length(shape):
    """Elements per row: the trailing dimensions' product once it reaches 512, if that is
    a whole number of 16-float vectors and leaves at least 2 rows; else the whole tensor."""
    numel, n = math.prod(shape), 1
    for d in reversed(shape):
        n *= d
        if n >= 512:
            break
    return n if n % 16 == 0 and 2 * n <= numel else numel


def _laid_out_like(x, t, g=None):
    # what the ops' fake kernels promise: a new tensor laid out as empty_like(x) (never g,
    # the op's own input, which x's gradient is where f' = 1)
    return torch.empty_like(x).copy_(t) if t is g or t.stride() != x.stride() else t


class _FusedCpuKernels:
    """The fused float32 CPU kernels of one activation.

    f32_fwd(x, *c) and f32_bwd(x, *c, g): its float32 forms as torch ops; c_source: their
    C (None where a form has no C counterpart); op_prefix: names its two custom ops
    (`eafo::<op_prefix>_<n>_fwd` / `_bwd`)."""

    def __init__(self, f32_fwd, f32_bwd, c_source, op_prefix):
        self.f32 = {"fwd": f32_fwd, "bwd": f32_bwd}
        self.c = _CKernels(c_source)

        # inductor's kernels run over x viewed as rows of its trailing dimensions
        # (16x197x768: 3152 rows of 768), with a zero per row subtracted from x (exact for
        # every x, -0.0 included). Why: over a flat tensor, inductor writes one OpenMP loop
        # whose body checks its index against the bound, and GCC cannot drop that check
        # when OpenMP picks the range: the tanh mix's forward took 3.47 ms on one thread
        # against 2.95 ms for the same loop without OpenMP. A row-indexed input makes
        # inductor parallelise the rows, and the inner loop, of a fixed length, loses the
        # check. Rows of the trailing dimensions keep that length when the batch size
        # changes (only the row count becomes dynamic).
        def rows_fwd(x, zero, *coefficients):
            return f32_fwd(x - zero, *coefficients)

        def rows_bwd(x, zero, *coefficients_and_g):
            return f32_bwd(x - zero, *coefficients_and_g)

        self._rows = {"fwd": _own_copy(rows_fwd, "_rows_fwd"), "bwd": _own_copy(rows_bwd, "_rows_bwd"),
                      "op_fwd": _own_copy(rows_fwd, "_op_rows_fwd"), "op_bwd": _own_copy(rows_bwd, "_op_rows_bwd")}
        self.compiled_rows = {}  # name -> inductor's kernel, compiled on first use
        self._zeros = {}  # rows -> a (rows, 1) zero
        self.op_name = _free_op_name(op_prefix)
        self._op_fwd, self._op_bwd = self._register_ops()

    def use_native(self, enabled=True):
        """Run float32 CPU kernels as our C kernels (the default) or not: then op by op, or
        torch.compile's after use_compiled_kernels(). EAFO_NATIVE_KERNELS=0 in the
        environment, read once when a kernel first runs, starts with them off."""
        self.c.enabled = bool(enabled)

    def kernel(self, name, compiled):
        """The kernel `name` ("fwd" or "bwd") for a float32 CPU tensor, or None where the
        module's other kernels serve (no C kernels, use_compiled_kernels() off)."""
        if torch.compiler.is_compiling():
            return self._call_op_fwd if name == "fwd" else self._call_op_bwd
        if not torch.is_grad_enabled() and self.c.get() is not None:
            return self.c.forward if name == "fwd" else self.c.backward
        if compiled:
            return self._run_fwd if name == "fwd" else self._run_bwd
        return None

    def run(self, name, x, *args):
        """The fused kernel `name` ("fwd", "bwd", "op_fwd" or "op_bwd") on x; args: the
        coefficients, then g for a backward.

        Our C kernels where there are some and no graph is being recorded (a backward with
        create_graph=True: the compiled kernels are differentiable). Else the compiled
        kernel, which sees few kinds of input, so that it is compiled few times: 2-d
        contiguous tensors (a copy where x or g is not contiguous), which do not require
        grad unless a graph is being recorded."""
        recording = torch.is_grad_enabled()
        if self.c.get() is not None and not (recording and any(t.requires_grad for t in (x, *args))):
            return self.c.run(name, x, *args)
        if name not in self.compiled_rows:
            self.compiled_rows[name] = _compile_kernel(self._rows[name])
        kernel = self.compiled_rows[name]
        n = _row_length(x.shape)
        rows = (x.numel() // n, n) if n else (1, 0)
        if rows[0] not in self._zeros:
            self._zeros[rows[0]] = torch.zeros((rows[0], 1), dtype=torch.float32)
        zero = self._zeros[rows[0]]
        xr = (x if recording else x.detach()).contiguous().view(rows)
        if name.endswith("fwd"):
            return kernel(xr, zero, *args).view(x.shape)
        *coefficients, g = args
        gr = (g if recording else g.detach()).contiguous().view(rows)
        dx, *dc = kernel(xr, zero, *coefficients, gr)
        return (g if dx is gr and g.is_contiguous() else dx.view(x.shape), *dc)

    def _run_fwd(self, x, *coefficients):
        return self.run("fwd", x, *coefficients)

    def _run_bwd(self, x, *coefficients_and_g):
        return self.run("bwd", x, *coefficients_and_g)

    def _call_op_fwd(self, x, *coefficients):
        return self._op_fwd(x, list(coefficients))

    def _call_op_bwd(self, x, *coefficients_and_g):
        *coefficients, g = coefficients_and_g
        return self._op_bwd(x, list(coefficients), g)

    def _register_ops(self):
        run = self.run

        def fwd(x: torch.Tensor, coefficients: list[torch.Tensor]) -> torch.Tensor:
            return _laid_out_like(x, run("op_fwd", x, *coefficients))

        def bwd(x: torch.Tensor, coefficients: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
            dx, *dc = run("op_bwd", x, *coefficients, g)
            return [_laid_out_like(x, dx, g), *dc]

        fwd_op = torch.library.custom_op(self.op_name + "_fwd", fwd, mutates_args=())
        bwd_op = torch.library.custom_op(self.op_name + "_bwd", bwd, mutates_args=())
        fwd_op.register_fake(lambda x, coefficients: torch.empty_like(x))
        bwd_op.register_fake(lambda x, coefficients, g: [torch.empty_like(x), *map(torch.empty_like, coefficients)])
        return fwd_op, bwd_op

    def info(self, compiled):
        """What kernel_info() says of them (see `_Kernels.info`)."""
        c = self.c.get()
        return {"runs": "c" if c is not None else "torch.compile" if compiled else None,
                "c_kernels": {"source": self.c.source is not None, "enabled": bool(self.c.enabled),
                              "built": c is not None, "build": self.c.build},
                "custom_ops": self.op_name, "compiled_row_kernels": sorted(self.compiled_rows)}
