"""What the benchmarks ran on: their ratios depend on the CPU, not only on the kernels.

On a Xeon with AVX-512 and one 512-bit FMA unit, nn.GELU's forward ran at about memory
speed while the generated kernels did not: fused forward+backward took 1.2-1.7x nn.GELU's
there, 0.8-1.3x on a machine without AVX-512. Each JSON line says which CPU it was.
"""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> dict:
    """Model, cores, the widest vector ISA inductor finds, and the vector width the
    generated fused kernels compile with (see `_cpu_kernel_options` in spaces.codegen)."""
    import os

    import spaces

    out = {"model": cpu_model(), "logical_cpus": os.cpu_count()}
    try:
        from torch._inductor import cpu_vec_isa

        isa = cpu_vec_isa.pick_vec_isa()
        out["inductor_vector_isa"] = str(isa) or "none"
        options = spaces.BASELINES["crrelu"].module_class().forward.__globals__["_cpu_kernel_options"]()
        out["fused_kernel_vector_bits"] = options.get("cpp.simdlen", isa.bit_width())
    except Exception as e:  # noqa: BLE001 - informative only
        out["inductor_vector_isa"] = f"unknown ({type(e).__name__})"
    return out
