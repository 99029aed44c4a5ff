"""Elementary functions for the Triton kernels, built from sqrt, log and polynomials only.

The Triton interpreter has no libdevice, and the GPU's fast log is inaccurate near 1, so log1p, asin, artanh and
acos (from x and 1 − |x|) are written out here; all work in float32 and are accurate to a few ulp.
"""

from __future__ import annotations

import triton
import triton.language as tl


def interpreted() -> bool:
    """True when triton.language was imported under TRITON_INTERPRET=1 (the kernels then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.standard.zeros, InterpretedFunction)


INTERPRETED = interpreted()

# float32 constants shared with the PyTorch reference: machine epsilon, eps² (the safe-sqrt knee), MIN_NORM.
EPS: tl.constexpr = tl.constexpr(1.1920928955078125e-07)
TINY: tl.constexpr = tl.constexpr(1.4210854715202004e-14)
MIN_NORM: tl.constexpr = tl.constexpr(1e-15)
HALF_PI: tl.constexpr = tl.constexpr(1.5707963267948966)
PI: tl.constexpr = tl.constexpr(3.141592653589793)


@triton.jit
def log1p(x):
    """log(1 + x): the series 2 artanh(x / (2 + x)) for |x| < 1/2 (7 terms, < 2e-8 relative), log(1 + x) beyond."""
    s = x / (2.0 + x)
    s2 = s * s
    series = 2.0 * s * (1.0 + s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 / 13))))))
    return tl.where(tl.abs(x) < 0.5, series, tl.log(1.0 + x))


@triton.jit
def _asin_core(s, z):
    """asin(s) for 0 ≤ s ≤ 1/2 given z = s² (Cephes' single-precision minimax polynomial)."""
    p = (((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z + 7.4953002686e-2) * z + 1.6666752422e-1
    return s + s * z * p


@triton.jit
def _asin_reduced(x):
    """(|x| > 1/2, asin(√((1 − |x|)/2)) there, else asin(|x|)): asin's range reduction."""
    a = tl.abs(x)
    big = a > 0.5
    z = tl.where(big, 0.5 * (1.0 - a), a * a)
    s = tl.where(big, tl.sqrt_rn(z), a)
    return big, _asin_core(s, z)


@triton.jit
def asin(x):
    """asin on [−1, 1]; |x| > 1/2 goes through asin(x) = π/2 − 2 asin(√((1 − x)/2))."""
    big, p = _asin_reduced(x)
    r = tl.where(big, -2.0 * p + HALF_PI, p)
    return tl.where(x < 0, -r, r)


@triton.jit
def safe_sqrt(z):
    """The reference's safe √: √z above eps², z / eps below; returns (value, derivative)."""
    big = z > TINY
    root = tl.sqrt_rn(tl.maximum(z, TINY))
    return tl.where(big, root, z / EPS), tl.where(big, 0.5 / root, 1.0 / EPS)


@triton.jit
def acos_from_complement(x, complement):
    """acos(x) given x ∈ [−1, 1] and 1 − |x| (`complement`) computed without cancellation: for |x| > 1/2 it is
    2 asin(√(complement/2)) (or π minus that), so angles near 0 and π keep the precision of the complement."""
    a = tl.abs(x)
    big = a > 0.5
    z = tl.where(big, 0.5 * complement, a * a)
    s = tl.where(big, tl.sqrt_rn(z), a)
    p = _asin_core(s, z)
    middle = tl.where(x < 0, p, -p) + HALF_PI
    return tl.where(big, tl.where(x > 0, 2.0 * p, -2.0 * p + PI), middle)


@triton.jit
def atanh(x):
    """artanh(x) = sign(x) log1p(2|x| / (1 − |x|)) / 2 for |x| < 1: accurate near 0 and near ±1."""
    a = tl.abs(x)
    r = 0.5 * log1p(2.0 * a / (1.0 - a))
    return tl.where(x < 0, -r, r)
