"""Float32 building blocks of the fused CPU kernels' forms, as torch ops.

The float32 forms (`spaces.kernels.forms`) write exp, softplus and sign(x) * y as calls
to these functions; a generated module with fused CPU kernels holds this file's text
(`spaces.kernels.inline`). They are multiply-adds and selects that inductor fuses into
one loop (its C++ would call Sleef for exp and log1p, several times slower than the
oneDNN kernel behind nn.GELU). The C kernels compute the same forms with the same
constants (`spaces.kernels.c_source` prints them from here).
"""
import torch

# exp(a) for a <= 0: a = n*ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 in two parts, so
# n*ln2 is exact), exp(r) = 1 + r + r**2 P(r) with P of degree 4 (tools/minimax.py,
# `exp_remainder_fit`: 3e-9 off; Cephes' expf has one degree more, which float32 rounding
# hides). Coefficients of P from r**0 up.
_EXP_LN2_HI, _EXP_LN2_LO = 0.693359375, -2.12194440e-4
_EXP_REMAINDER = (4.999999403953552e-1, 1.666652113199234e-1, 4.1668377816677094e-2,
                  8.36868304759264e-3, 1.3815137790516019e-3)

# log(1 + y)/y on [0, 1], degrees (2, 3): (c, P, Q), coefficients in powers of y rounded
# to float32, from tools/minimax.py (`rational_fit(log1p_ratio, 1, 2, 3, odd=False)`, max
# error 1.6e-8). softplus(a) = max(a, 0) + y P(y)/Q(y), y = exp(-|a|): no log, no
# overflow, relatively accurate where softplus is tiny (a << 0); exactly a for a > 17.
_LOG1P_RATIO_RATIONAL = (1.0, (1.0, 0.8692220449447632, 0.12455064058303833),
                         (1.0, 1.3692203760147095, 0.4758569598197937, 0.031328726559877396))


def _horner(coefficients, v):
    """c0 + v*(c1 + v*(c2 + ...)): the same ops, in the same order, as a printed Horner form."""
    out = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = c + v * out
    return out


def _exp_nonpositive(a):
    """exp(a) for a <= 0 in float32, in multiply-adds a fused CPU kernel inlines.

    2**n is written straight into the float's exponent bits: the integer (n + 127) * 2**23,
    computed exactly in float32 as one multiply-add. Relative error below 1e-7 (tested).
    a < -88 gives n = -127, exponent bits 0: exactly 0.0, where float32's exp underflows
    anyway. NaN stays NaN."""
    a = torch.where(a < -88.0, -88.0, a)  # a select: NaN stays NaN (a clamp costs one op more)
    n = torch.floor(a * 1.4426950408889634 + 0.5)
    r = a - n * _EXP_LN2_HI - n * _EXP_LN2_LO
    p = _horner(_EXP_REMAINDER, r) * (r * r) + r + 1.0
    return p * (n * 8388608.0 + 1065353216.0).to(torch.int32).view(torch.float32)


def _with_sign_of(y, x):
    """y (>= 0) with the sign of x, in float32: sign(x) * y as a compare and a blend."""
    return torch.where(x < 0.0, -y, y)


def _softplus(a):
    """log(1 + exp(a)) in float32: max(a, 0) + y P(y)/Q(y), y = exp(-|a|); NaN stays NaN."""
    y = _exp_nonpositive(-torch.abs(a))
    _, p, q = _LOG1P_RATIO_RATIONAL
    return torch.where(a > 0.0, a, 0.0) + y * _horner(p, y) / _horner(q, y)
