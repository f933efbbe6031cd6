"""What the benchmarks ran on: their ratios depend on the CPU, not only on the kernels.

On a Xeon with AVX-512 and one 512-bit FMA unit, nn.GELU's forward ran at about memory
speed while torch.compile's kernels for our forms did not: their forward+backward took
1.3-1.8x nn.GELU's there, 0.8-1.3x on a machine without AVX-512. Each JSON line says
which CPU it was and how our C kernels were built.
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
    """Model, cores, the widest vector ISA inductor finds, the vector width torch.compile's
    fused kernels compile with (`_cpu_kernel_options` in spaces.kernels.runtime), and the
    compiler command line of our C kernels (spaces.kernels.c_loader; None where they cannot
    be built), as a generated module's kernel_info() reports it."""
    import os

    import spaces
    from spaces.codegen import module_of
    from spaces.kernels.runtime import _cpu_kernel_options

    out = {"model": cpu_model(), "logical_cpus": os.cpu_count()}
    try:
        from torch._inductor import cpu_vec_isa

        isa = cpu_vec_isa.pick_vec_isa()
        out["inductor_vector_isa"] = str(isa) or "none"
        out["inductor_kernel_vector_bits"] = _cpu_kernel_options().get("cpp.simdlen", isa.bit_width())
    except Exception as e:  # noqa: BLE001 - informative only
        out["inductor_vector_isa"] = f"unknown ({type(e).__name__})"
    info = module_of(spaces.BASELINES["crrelu"].module_class()).kernel_info()
    out["c_kernel_build"] = info["fused_cpu"]["c_kernels"]["build"]
    return out
