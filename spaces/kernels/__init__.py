"""The kernels of generated activation modules, as ordinary modules.

What a generated module computes, and how (spaces.codegen assembles a module from them):
- `forms`: the float32 forms of a kernel's expressions (exp, erf, tanh, sigmoid and
  softplus as multiply-adds), with their coefficient tables;
- `printers`: sympy expression -> torch source (exact and in-place) and C source, one
  shared tree walk on top of sympy's own code printers;
- `c_source`: the C file of a formula's fused float32 CPU kernels.

The runtime a generated module holds, pasted in from these files' own text (`inline`);
every top-level name starts with an underscore, so no user-given name can shadow one:
- `runtime`: which kernels a call runs (every module);
- `float32_ops`, `c_loader`, `fused_cpu`: the fused float32 CPU kernels (the engine's
  modules and `--native` exports): torch helpers of the float32 forms, building and
  calling the C kernels, inductor's kernels over rows, the custom ops of torch.compile.
"""
