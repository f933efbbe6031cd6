"""The float32 forms of a kernel's expressions: what the fused float32 CPU kernels compute.

`float32_forms(exprs)` rewrites the expressions one fused kernel computes (a forward,
or a backward's d/dx and d/dc) so that exp, erf, tanh, sigmoid and softplus become
multiply-adds, selects and the helpers of `spaces.kernels.float32_ops`; the torch
printer prints them for inductor, the C printer (`spaces.kernels.c_source`) as C.
The sympy functions below (`exp_nonpositive`, `with_sign_of`, ...) are the nodes those
printers know beyond sympy's own. Coefficient tables come from tools/minimax.py; the
tests check their accuracy (tests/test_kernel_forms.py).
"""
from __future__ import annotations

import sympy as sp

from spaces import functions as fn
from spaces.functions import X


# Backward forms of bases that share their expensive part with the rest of the
# derivative: gelu'(x) needs erf(x/sqrt(2)) anyway, silu'(x) and mish'(x) need
# sigmoid(x) and tanh(softplus(x)). Writing gelu(x) itself (e.g. in a
# coefficient's gradient) through the same erf lets sympy.cse compute each
# transcendental once per element instead of once per use.
_SHARED_FORMS = {
    fn.gelu: lambda a: a * (1 + sp.erf(a / sp.sqrt(2))) / 2,
    fn.silu: lambda a: a * fn.sigmoid(a),
    fn.mish: lambda a: a * sp.tanh(fn.softplus(a)),
}


def shared_form(e: sp.Expr) -> sp.Expr:
    return e.replace(lambda n: type(n) in _SHARED_FORMS,
                     lambda n: _SHARED_FORMS[type(n)](n.args[0]))


# Float32 forms for fused CPU kernels. Inductor's C++ calls Sleef for exp, erf,
# tanh and sigmoid, and for the same maths it is several times slower than the
# oneDNN kernel behind nn.GELU. These forms are plain multiply-adds that inductor
# fuses into one loop:
# - erf(u), where the kernel needs the Gaussian exp(-u**2) anyway (gelu'(x), EAFO
#   corrections of gelu), is Abramowitz & Stegun 7.1.26 (the formula of PyTorch's own
#   vectorised float32 erf, at::vec::Vectorized<float>::erf):
#   sign(u) * (1 - t*P(t) * exp(-u**2)), t = 1/(1 + p|u|), |error| <= 1.5e-7; sympy.cse
#   computes that exp once for both.
# - erf(u) elsewhere (a gelu forward, the gelu-tanh mix's) is an odd minimax rational
#   like tanh's: sign(u) a P(a**2)/Q(a**2), a = |u| clamped to 4.2, exactly 1 in size
#   from there on and wherever rounding would pass 1 (`ERF_RATIONAL`, within 5.4e-8
#   of erf): no exp. On a 2-vCPU AVX-512 Xeon the gelu forward kernel took 0.74x the
#   time of the A&S form (0.53 against 0.72 ms, 16x197x768), the mix's 0.8x. It is
#   less accurate than A&S with torch's ops (1.2e-6 against 4.6e-7 off for gelu on
#   [-10, 10]: the rational's own float32 rounding, a few ulp), as accurate as float32
#   torch's F.gelu there (1.15e-6 on that Xeon); tested.
# - tanh(u) alone (a forward) is an odd minimax rational: sign(u) a P(a**2)/Q(a**2),
#   a = |u| clamped to 9.5, exactly 1 in size from there on and wherever rounding
#   would pass 1 (`_tanh_float32`): no exp; the gelu-tanh mix's forward kernel took
#   ~0.87x the time of the exp form. Within 3.7e-7 of tanh in float32 (rounding, not the fit).
# - a kernel that also needs tanh(u)**2 (a backward) must not take tanh' as
#   1 - (rational)**2: near tanh = 1 that cancels to 7e-7 off. Where the gradient's
#   sensitivity to tanh(u) is free of x, a rational for T = 1 - tanh(|u|) gives
#   tanh' = T (2 - T) and tanh = sign(u) (1 - T), within 1.5e-7 and with no exp (the
#   mix's backward kernel: ~0.9x the exp form's time). Where x multiplies tanh'
#   ((x tanh x)', say), it needs relative accuracy in the tails: tanh' is
#   4e/(1 + e)**2, tanh is sign(u)(1 - e)/(1 + e), one e = exp(-2|u|) for both.
#   See `float32_forms`.
# - sigmoid(a) = 1/(1 + e) (times e for a < 0), e = exp(-|a|): no overflow.
# - softplus(a) = max(a, 0) + y P(y)/Q(y), y = exp(-|a|), P/Q a minimax rational for
#   log(1 + y)/y (`_softplus` in float32_ops): no log.
# - mish's tanh(softplus(u)) is a closed form in e = exp(-|u|), its complement too
#   (`_tanh_softplus_float32`): mish's kernels take one exp each.
# - sign(u) * y is `with_sign_of(y, u)`: a compare and a blend (where(u < 0, -y, y)), not
#   inductor's five-op sign. (Not bit operations through view(torch.int32): inductor
#   writes each such view as a store, a scalar loop and a load, which GCC turned into
#   ~35 shuffles per 512-bit vector; the tanh mix's forward took 6.3 ms instead of 2.2.)
# - every exp whose argument sympy proves <= 0 (all of the above, and every
#   Gaussian term) becomes `exp_nonpositive`, printed as `_exp_nonpositive`: a Cody-Waite
#   reduction, a degree-4 polynomial, 2**n built in the exponent bits
#   (`spaces.kernels.float32_ops`).
# Accuracy against float64 is tested (tests/test_kernel_forms.py): up to 1.2e-6 off for
# gelu's forward (the rational erf's float32 rounding), a few 1e-7 elsewhere.
# float64 and CUDA kernels keep the exact forms (torch.erf, torch.exp, ...).


class exp_nonpositive(sp.Function):  # noqa: N801 - printed like sympy's own functions
    """exp(a) for an argument known to be <= 0 (see `float32_forms`)."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return sp.exp(arg) if arg.is_Number else None

    def fdiff(self, argindex=1):
        return self




class at_most(sp.Function):  # noqa: N801
    """min(a, c) for a number c, NaN kept: printed as torch.clamp(a, max=c), in C as one
    compare and one blend (`eafo_at_most`), where a NaN-keeping Min takes three ops."""

    nargs = 2

    def _eval_is_extended_real(self):
        return True

    @classmethod
    def eval(cls, a, c):
        return sp.Min(a, c) if a.is_Number else None


class softplus_float32(sp.Function):  # noqa: N801
    """softplus(a) for fused float32 kernels, printed as `_softplus(a)` (see
    spaces.kernels.float32_ops): nonnegative to sympy, so exp(-2 softplus) is an
    exp_nonpositive and |softplus| is softplus."""

    nargs = 1

    def _eval_is_extended_real(self):
        return True

    def _eval_is_nonnegative(self):
        return True

    @classmethod
    def eval(cls, a):
        return fn.softplus(a) if a.is_Number else None




class with_sign_of(sp.Function):  # noqa: N801
    """y * sign(x) for y >= 0, printed as `_with_sign_of(y, x)`: where(x < 0, -y, y), a
    compare and a blend, where inductor's sign is two compares, two blends and a
    subtract. At x = 0 (either sign) it gives y where sign(x) * y gives 0; the erf and
    tanh forms that use it have y = 0 or ~1e-9 there."""

    nargs = 2

    def _eval_is_extended_real(self):
        return True  # else sympy treats sign(... with_sign_of ...) as complex: conjugate()

    @classmethod
    def eval(cls, y, x):
        if x.is_Number:
            return y * sp.sign(x)
        if x.is_nonnegative:  # softplus(u), say: no sign to put back
            return y
        if isinstance(x, sp.Mul):  # sign(x/sqrt(2)) is sign(x): no multiply for it
            consts = [a for a in x.args if not a.free_symbols]
            if consts and sp.Mul(*consts).is_positive:
                return cls(y, sp.Mul(*[a for a in x.args if a.free_symbols]))
        return None


# tanh on [0, c], degrees (5, 3): (c, P, Q), coefficients in powers of s = u**2 rounded
# to float32, from `tools.minimax.odd_rational_fit(np.tanh, 9, 5, 3)` (max error 5.3e-8;
# `python -m tools.minimax` prints it again; 7.2e-8 once rounded to float32, tested).
# Beyond c, tanh is 1 to within 3e-8, below float32's half ulp: the form gives exactly 1.
# The forward clamps u to +-9.5, where the rational is 1 + 1.3e-6 (22 ulps over 1).
TANH_CLAMP = 9.5
TANH_RATIONAL = (9.0,
                 (0.9999997615814209, 0.1291065812110901, 0.0029119683895260096, 9.194866834150162e-06,
                   -1.2590678721835502e-08, 1.783723342640986e-11),
                 (1.0, 0.4624389111995697, 0.02372605912387371, 0.00022693752544000745))

# erf on [0, c], degrees (6, 4): (c, P, Q) as for tanh, from
# `tools.minimax.odd_rational_fit(tools.minimax.erf, 4, 6, 4)` (max error 5.4e-8; 1.06e-7
# once rounded to float32, tested).
# Beyond c, erf is 1 to within 1.6e-8, below float32's half ulp. The form clamps u to
# +-4.2, where the rational is 1 + 2.4e-6 (40 ulps over 1): exactly 1 after the clamp.
ERF_CLAMP = 4.2
ERF_RATIONAL = (4.0,
                (1.1283786296844482, 0.2139449417591095, 0.052433501929044724, 0.004293064586818218,
                 0.00015553721459582448, -1.990324790313025e-06, 1.9217230473600466e-08),
                (1.0, 0.5229314565658569, 0.1207997277379036, 0.015551112592220306, 0.0010980413062497973))

# 1 - tanh(a) on [0, c], a >= 0, degrees (5, 7): (c, P, Q), coefficients in powers of a
# rounded to float32, from `tools.minimax.rational_fit(tanh_complement, 9, 5, 7,
# odd=False)` (max error 2.3e-8; 4.3e-8 rounded); 1 - tanh(9) = 3e-8, so the form is 0 beyond c.
TANH_COMPLEMENT_RATIONAL = (9.0,
                            (1.0, -0.5898440480232239, 0.14313693344593048, -0.017802836373448372,
                             0.001130669959820807, -2.9221660952316597e-05),
                            (1.0, 0.4101581275463104, 0.5532601475715637, 0.20233531296253204,
                             0.06610940396785736, 0.01606503129005432, 0.002281732624396682,
                             0.0005384827964007854))


def _horner(coefs, v: sp.Expr) -> sp.Expr:
    out = sp.Float(coefs[-1])
    for c in reversed(coefs[:-1]):
        out = sp.Float(c) + v * out
    return out


_AS_P = 0.3275911
_AS_COEFFS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf_float32(u: sp.Expr) -> sp.Expr:
    t = 1 / (1 + sp.Float(_AS_P) * sp.Abs(u))
    poly = sp.Float(0)
    for c in reversed(_AS_COEFFS):  # Horner: t*(a1 + t*(a2 + ...))
        poly = t * (sp.Float(c) + poly)
    return with_sign_of(1 - poly * sp.exp(-u**2), u)


def _odd_rational_float32(u: sp.Expr, fit, clamp_at: float) -> sp.Expr:
    # sign(u) a P(a**2)/Q(a**2) for a = |u| clamped to clamp_at, the rational clamped to
    # 1: where the rational at clamp_at is over 1 by many ulps (tested), the form is
    # exactly 1 in size from there on (so gelu_tanh(-1e30) is -0, not -1e30 times a
    # rounding error), and also wherever rounding would pass 1. The sign of u is put
    # back with a select (odd). NaN stays NaN (the clamps keep it).
    _, p, q = fit
    a = sp.Abs(u)
    # min(k*|x|, c) as k*min(|x|, c/k) for a constant k > 0 (erf(x/sqrt(2))): k then
    # joins the coefficients (not in the outer clamp: that must give exactly 1)
    k, rest = a.as_independent(*a.free_symbols, as_Add=False) if a.is_Mul else (sp.Integer(1), a)
    v = k * at_most(rest, sp.Float(float(clamp_at / k))) if k.is_positive else at_most(a, clamp_at)
    return with_sign_of(at_most(v * _horner(p, v**2) / _horner(q, v**2), 1), u)


def _tanh_float32(u: sp.Expr) -> sp.Expr:
    return _odd_rational_float32(u, TANH_RATIONAL, TANH_CLAMP)


def _erf_rational_float32(u: sp.Expr) -> sp.Expr:
    return _odd_rational_float32(u, ERF_RATIONAL, ERF_CLAMP)


def _tanh_complement_float32(u: sp.Expr) -> sp.Expr:
    """1 - tanh(|u|) = P(a)/Q(a), a = |u| <= c; 0 beyond c."""
    c, p, q = TANH_COMPLEMENT_RATIONAL
    a = sp.Abs(u)
    return where_positive(a - c, 0, _horner(p, a) / _horner(q, a))


def _tanh_exp_float32(u: sp.Expr) -> sp.Expr:
    e = sp.exp(-2 * sp.Abs(u))
    return with_sign_of((1 - e) / (1 + e), u)


def _tanh_squared_float32(u: sp.Expr) -> sp.Expr:
    # tanh' = 1 - tanh**2 becomes 4e/(1 + e)**2: no cancellation where tanh is near 1,
    # so tanh' keeps its relative accuracy in the tails ((x tanh x)' multiplies it by x)
    e = sp.exp(-2 * sp.Abs(u))
    return 1 - 4 * e / (1 + e)**2


def _tanh_softplus_float32(u: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(tanh(softplus(u)), 1 - tanh(softplus(u))) from one e = exp(-|u|), for mish:
    with w = e**u, tanh(log(1 + w)) = (w**2 + 2w)/(w**2 + 2w + 2); divided through by
    w**2 where u > 0, so nothing overflows, and 1 - tanh is 2e**2/D or 2/D exactly
    (no cancellation where tanh is near 1, which mish'(x) multiplies by x)."""
    e = exp_nonpositive(-sp.Abs(u))  # not sp.exp: sympy would make e**2 a second exp
    denominator = where_positive(u, 1 + 2 * e + 2 * e**2, e**2 + 2 * e + 2)
    tanh = where_positive(u, 1 + 2 * e, e**2 + 2 * e) / denominator
    complement = where_positive(u, 2 * e**2, 2) / denominator
    return tanh, complement


class where_positive(sp.Function):  # noqa: N801
    """`pos` where a > 0, else `other` (also for a NaN): printed as torch.where, a
    blend in a fused kernel. (A Piecewise whose condition holds another Piecewise
    turns into sympy's ITE; `(a > 0).to(dtype)` times a difference costs fused kernels
    ~20% more.)"""

    nargs = 3

    def _eval_is_extended_real(self):
        return True  # its branches are; else sign() of it prints conjugate()

    @classmethod
    def eval(cls, a, pos, other):
        return (pos if a > 0 else other) if a.is_Number else None


def _sigmoid_float32(a: sp.Expr) -> sp.Expr:
    # 1/(1 + e) for a > 0, e/(1 + e) below (no cancellation); at a = 0, e = 1: both agree.
    e = sp.exp(-sp.Abs(a))
    return where_positive(a, 1, e) / (1 + e)


def _step_float32(a: sp.Expr) -> sp.Expr:
    return where_positive(a, 1, 0)


_FLOAT32_FORMS = {sp.tanh: _tanh_float32, fn.sigmoid: _sigmoid_float32,
                  fn.step: _step_float32, fn.softplus: softplus_float32}


def _tanh_sensitivity_free_of_x(exprs: list[sp.Expr], u: sp.Expr) -> bool:
    """Whether d(expr)/d(tanh(u)) is free of x for every expression: then an absolute
    error in tanh(u) stays a bounded absolute error in the kernel's outputs."""
    tau = sp.Dummy("tau", real=True)
    return all(X not in sp.diff(e.subs(sp.tanh(u), tau), tau).free_symbols for e in exprs)


def float32_forms(exprs: list[sp.Expr]) -> list[sp.Expr]:
    """The float32 forms of the expressions one fused kernel computes."""
    exprs = [shared_form(e) for e in exprs]
    # tanh(u) in a kernel that also needs tanh(u)**2 (a backward): tanh' = 1 - tanh**2
    # must not be 1 - (rational)**2, which cancels where tanh is near 1 (7e-7 off).
    # - Where the outputs' sensitivity to tanh(u) is free of x (beta*gelu + (1-beta)*tanh,
    #   tanh itself), absolute accuracy is what counts: T = 1 - tanh(|u|) as a rational,
    #   tanh' = T (2 - T), tanh = sign(u)(1 - T); no exp.
    # - Else ((x tanh x)' multiplies tanh' by x, so it needs relative accuracy in the
    #   tails): one e = exp(-2|u|), tanh' = 4e/(1 + e)**2, tanh = sign(u)(1-e)/(1+e).
    # mish's tanh(softplus(u)) has closed forms of its own (`_tanh_softplus_float32`).
    # A forward's tanh alone is the odd rational (`_tanh_float32`).
    squared = {n.base.args[0] for e in exprs for n in e.atoms(sp.Pow)
               if n.exp == 2 and isinstance(n.base, sp.tanh)}
    bounded = {u for u in squared if _tanh_sensitivity_free_of_x(exprs, u)}

    def squared_form(u):
        if u in bounded:
            t = _tanh_complement_float32(u)
            return 1 - t * (2 - t)
        return _tanh_squared_float32(u)

    def tanh_form(u):
        if u in bounded:
            return with_sign_of(1 - _tanh_complement_float32(u), u)
        return _tanh_exp_float32(u)

    # erf(u) shares its exp with a Gaussian exp(-u**2) the kernel computes anyway (A&S),
    # else it is a rational with no exp
    gaussians = {sp.expand(n.args[0]) for e in exprs for n in e.atoms(sp.exp)}

    def erf_form(u):
        return _erf_float32(u) if sp.expand(-u**2) in gaussians else _erf_rational_float32(u)

    def is_tanh_softplus(n):
        return isinstance(n, sp.tanh) and isinstance(n.args[0], fn.softplus)

    def form(e):
        # mish's tanh(softplus(u)): closed forms in exp(-|u|), one exp for the kernel
        e = e.replace(lambda n: n.is_Pow and n.exp == 2 and is_tanh_softplus(n.base),
                      lambda n: 1 - (lambda c: c * (2 - c))(_tanh_softplus_float32(n.base.args[0].args[0])[1]))
        e = e.replace(is_tanh_softplus, lambda n: _tanh_softplus_float32(n.args[0].args[0])[0])
        e = e.replace(lambda n: n.is_Pow and n.exp == 2 and isinstance(n.base, sp.tanh),
                      lambda n: squared_form(n.base.args[0]))
        e = e.replace(lambda n: isinstance(n, sp.tanh) and n.args[0] in squared,
                      lambda n: tanh_form(n.args[0]))
        e = e.replace(lambda n: isinstance(n, sp.erf), lambda n: erf_form(n.args[0]))
        e = e.replace(lambda n: type(n) in _FLOAT32_FORMS,
                      lambda n: _FLOAT32_FORMS[type(n)](n.args[0]))
        return e.replace(lambda n: isinstance(n, sp.exp) and bool(n.args[0].is_nonpositive),
                         lambda n: exp_nonpositive(n.args[0]))

    return [form(e) for e in exprs]

