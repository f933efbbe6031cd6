"""Build, cache and call one activation's C kernels (`spaces.kernels.c_source`).

A generated module with fused float32 CPU kernels holds its C source and this file's
text (`spaces.kernels.inline`). On first use it compiles the C with the system's C
compiler (`gcc`, or `$CC`), once per source, flags and CPU, caches the library on disk
(`~/.cache/eafo-search/kernels`, or `$EAFO_KERNEL_CACHE`), and calls it through ctypes
(which releases the GIL). Where no compiler works, a warning says so (once per process)
and the kernels run otherwise (`spaces.kernels.fused_cpu`).

Every top-level name starts with an underscore (see spaces.kernels.runtime).
"""
import os as _os

import torch

# Tried in order: vectors as wide as the CPU has (on a 2-vCPU AVX-512 Xeon, 512-bit
# vectors ran CRReLU's forward+backward in 0.76x the time of 256-bit ones), then the
# compiler's own choice, then portable code.
_C_FLAG_SETS = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])
_C_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
                 "-fno-trapping-math"]


def _cpu_identity():
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _build_library(source, compiler, flags, path):
    import subprocess
    import tempfile

    _os.makedirs(_os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_os.path.dirname(path)) as tmp:
        c_file = _os.path.join(tmp, "kernel.c")
        with open(c_file, "w") as f:
            f.write(source)
        built = _os.path.join(tmp, "kernel.so")
        subprocess.run([compiler, *_C_BASE_FLAGS, *flags, c_file, "-o", built],
                       check=True, capture_output=True, timeout=300)
        _os.replace(built, path)  # atomic: other processes see no library or a whole one


def _coefficient_values(coefficients):
    """What the kernels' `const float *c` points at: a lone float32 coefficient's own
    storage (no copy, no dispatch), else a ctypes array of the values (None for none)."""
    if len(coefficients) == 1:
        (c,) = coefficients
        if isinstance(c, torch.Tensor) and c.dtype == torch.float32 and c.is_cpu:
            return c.data_ptr()
    if not coefficients:
        return None
    import ctypes

    return (ctypes.c_float * len(coefficients))(*[float(c) for c in coefficients])


class _CKernels:
    """The C kernels of one activation: `eafo_fwd` and `eafo_bwd` of `source` (None: the
    formula has no C form), loaded on first use.

    EAFO_NATIVE_KERNELS=0 in the environment, read once (on the first `get`), starts them
    switched off; `enabled` switches them at run time (the module's use_native_kernels)."""

    def __init__(self, source):
        self.source = source
        self.enabled = None  # None: not read from the environment yet
        self.flag_sets = _C_FLAG_SETS
        self.build = None  # the compiler command line that built the library
        self._loaded = False  # False: not tried yet; None: tried, no library; else (fwd, bwd)

    def get(self):
        """(forward, backward) C functions, or None: no C form, switched off, or no compiler
        that builds it (a warning says why). Called on every kernel call: attribute reads
        only (reading os.environ each time cost ~13 us between two cold kernels)."""
        if self.enabled is None:
            self.enabled = _os.environ.get("EAFO_NATIVE_KERNELS", "1") != "0"
        if not self.enabled or self.source is None:
            return None
        if self._loaded is False:
            self._loaded = self._load()
        return self._loaded

    def _load(self):
        import ctypes
        import hashlib
        import subprocess

        cache = _os.environ.get("EAFO_KERNEL_CACHE") or _os.path.join(
            _os.path.expanduser("~"), ".cache", "eafo-search", "kernels")
        compiler = _os.environ.get("CC") or "gcc"
        errors = []
        for flags in self.flag_sets:
            key = "\0".join([self.source, compiler, *_C_BASE_FLAGS, *flags, _cpu_identity()])
            path = _os.path.join(cache, "eafo_" + hashlib.sha256(key.encode()).hexdigest()[:20] + ".so")
            try:
                if not _os.path.exists(path):
                    _build_library(self.source, compiler, flags, path)
                lib = ctypes.CDLL(path)
            except (OSError, subprocess.SubprocessError) as e:
                stderr = getattr(e, "stderr", None)
                errors.append((stderr.decode(errors="replace") if isinstance(stderr, bytes) and stderr
                               else str(e)).strip()[:200])
                continue
            fwd, bwd = lib.eafo_fwd, lib.eafo_bwd
            p, n, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            fwd.argtypes, fwd.restype = [p, p, n, p, i], None
            bwd.argtypes, bwd.restype = [p, p, p, n, p, p, i], ctypes.c_int
            self.build = " ".join([compiler, *_C_BASE_FLAGS, *flags])  # benchmarks report it
            return fwd, bwd
        import warnings

        # warn_explicit with no registry of this module's: with the "once" filter spaces
        # installs, one line per process for any number of candidates (a module's registry
        # would make it one per module)
        warnings.warn_explicit("eafo: no C kernels (" + "; ".join(dict.fromkeys(errors)) + "): float32 CPU "
                               "kernels run op by op, or torch.compile's after use_compiled_kernels()",
                               RuntimeWarning, filename=__name__, lineno=0, module=__name__)
        return None

    def run(self, name, x, *args):
        """Kernel `name` ("fwd"/"op_fwd" or "bwd"/"op_bwd") on x: x (and g, the last of
        args for a backward) as contiguous float32, the coefficients as floats. No autograd
        here: callers run it where nothing is recorded. Lean on purpose: after a kernel has
        streamed tens of MB through the caches, each Python step between kernels runs cold
        (a no-op .to() took 45 us there, 5 us on a small tensor)."""
        fwd, bwd = self._loaded
        xc = x if x.is_contiguous() else x.contiguous()
        n, threads = xc.numel(), torch.get_num_threads()
        if name.endswith("fwd"):
            out = torch.empty_like(xc)
            fwd(xc.data_ptr(), out.data_ptr(), n, _coefficient_values(args), threads)
            return out
        *coefficients, g = args
        gc = g if g.is_contiguous() else g.contiguous()
        dx = torch.empty_like(xc)
        k = len(coefficients)
        dc = torch.empty(() if k == 1 else (k,), dtype=torch.float32) if k else None
        if bwd(xc.data_ptr(), gc.data_ptr(), dx.data_ptr(), n, _coefficient_values(coefficients),
               None if dc is None else dc.data_ptr(), threads):
            raise MemoryError("eafo: no memory for the C backward's block sums")
        # (one storage per gradient: a custom op's outputs may not alias each other)
        grads = () if dc is None else (dc,) if k == 1 else [d.clone() for d in dc.unbind()]
        return (dx, *[d if d.dtype == c.dtype else d.to(c.dtype) for d, c in zip(grads, coefficients)])

    def forward(self, x, *coefficients):
        return self.run("fwd", x, *coefficients)

    def backward(self, x, *coefficients_and_g):
        return self.run("bwd", x, *coefficients_and_g)
