"""Hypothesis strategies for chains and operators, and an independent dense reference.

Strategies
----------
- :func:`general_chains`: any valid chain (dense or not) with 1 to 8 factors, mixed
  ``r``, ``s``, ``t``, every size at most ``max_size``.
- :func:`dense_chains`: chains built by the dense rule (``t_1 = 1``, ``t_{i+1} = r_i t_i``,
  last factor one block), including ``(1, 1, t)`` diagonal factors.
- :func:`chains`: either of the above.
- :func:`operators`: a DeBut operator with random values on such a chain, in a given
  dtype, sometimes with a padded shape ``(m, n) <= (P, Q)``.

Reference
---------
The dense reference is built here from the canonical layout formula (docs/conventions.rst),
independently of the library's kernels and sparse export: ``V[b, i, j, k]`` sits at row
``b r t + i t + k`` and column ``b s t + j t + k`` of its factor, and the product is
``F_N ... F_1`` cut to the operator's shape.  :func:`assert_product_close` checks a
computed product against it with the classical forward error bound for matrix products
(``|fl(A B x) - A B x| <= gamma * |A| |B| |x|``), which is tight for every dtype and does not
break down when entries cancel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import strategies as st

from debutla import Chain, DeBut, FactorSpec

DTYPES = (np.float32, np.float64, np.complex64, np.complex128)
DTYPE_IDS = ("float32", "float64", "complex64", "complex128")
MAX_SIZE = 48

_SMOOTH = (1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 36, 48)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------
# chains
# ---------------------------------------------------------------------------------------

@st.composite
def general_chains(draw, min_factors: int = 1, max_factors: int = 8,
                   max_size: int = MAX_SIZE) -> Chain:
    """A valid chain built input side first; dense only by accident."""
    n_factors = draw(st.integers(min_factors, max_factors))
    q = draw(st.one_of(st.sampled_from([v for v in _SMOOTH if v <= max_size]),
                       st.integers(1, max_size)))
    specs = []
    for _ in range(n_factors):
        t = draw(st.sampled_from(_divisors(q)))
        s = draw(st.sampled_from(_divisors(q // t)))
        nb = q // (s * t)
        r = draw(st.integers(1, max(1, min(6, max_size // (nb * t)))))
        p = nb * r * t
        specs.append(FactorSpec(p, q, r, s, t))
        q = p
    return Chain(specs)


def dense_chain_from_rs(rs) -> Chain:
    """The dense chain of a ``(r_i, s_i)`` sequence (input side first).

    Factor ``i`` has ``t = r_1 ... r_{i-1}`` and takes ``q = t * s_i ... s_N`` inputs.
    """
    specs = []
    t = 1
    rest = math.prod(s for _, s in rs)
    for r, s in rs:
        q = t * rest
        rest //= s
        p = t * r * rest
        specs.append(FactorSpec(p, q, r, s, t))
        t *= r
    return Chain(specs)


@st.composite
def dense_chains(draw, min_factors: int = 1, max_factors: int = 8,
                 max_rows: int = 8, max_cols: int = 8) -> Chain:
    """A chain satisfying the dense rule, ``m = prod r <= max_rows``, ``n = prod s <= max_cols``."""
    n_factors = draw(st.integers(min_factors, max_factors))
    rs = []
    R = S = 1
    for _ in range(n_factors):
        r = draw(st.integers(1, min(4, max_rows // R)))
        s = draw(st.integers(1, min(4, max_cols // S)))
        R, S = R * r, S * s
        rs.append((r, s))
    return dense_chain_from_rs(rs)


def chains(min_factors: int = 1, max_factors: int = 8):
    """Dense or general valid chains."""
    return st.one_of(dense_chains(min_factors, max_factors),
                     general_chains(min_factors, max_factors))


# ---------------------------------------------------------------------------------------
# values and operators
# ---------------------------------------------------------------------------------------

def random_values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Standard normal values of ``dtype`` (complex: both parts)."""
    dt = np.dtype(dtype)
    v = rng.standard_normal(shape)
    if dt.kind == "c":
        v = v + 1j * rng.standard_normal(shape)
    return v.astype(dt)


@st.composite
def operators(draw, dtype, chain_strategy=None, padded: bool = True) -> DeBut:
    """A DeBut operator on a drawn chain, values from a seeded generator."""
    chain = draw(chain_strategy if chain_strategy is not None else chains())
    P, Q = chain.shape
    shape = None
    if padded and draw(st.booleans()):
        shape = (draw(st.integers(1, P)), draw(st.integers(1, Q)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vals = [random_values(rng, spec.value_shape, dtype) for spec in chain]
    return DeBut(chain, vals, shape=shape)


# ---------------------------------------------------------------------------------------
# independent dense reference
# ---------------------------------------------------------------------------------------

def _wide(dtype) -> np.dtype:
    return np.dtype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64)


def factor_dense(spec: FactorSpec, V: np.ndarray) -> np.ndarray:
    """Factor values placed by the canonical layout formula, in float64/complex128."""
    nb, r, s, t = spec.nb, spec.r, spec.s, spec.t
    assert V.shape == (nb, r, s, t)
    D = np.zeros((spec.p, spec.q), dtype=_wide(V.dtype))
    for b, i, j, k in itertools.product(range(nb), range(r), range(s), range(t)):
        row = b * r * t + i * t + k
        col = b * s * t + j * t + k
        assert D[row, col] == 0  # each position is written once
        D[row, col] = V[b, i, j, k]
    return D


def chain_dense(chain: Chain, factors, shape=None, absolute: bool = False) -> np.ndarray:
    """``F_N ... F_1`` cut to ``shape``; with ``absolute``, ``|F_N| ... |F_1|``."""
    D = None
    for spec, V in zip(chain, factors):
        F = factor_dense(spec, np.asarray(V))
        if absolute:
            F = np.abs(F)
        D = F if D is None else F @ D
    m, n = shape if shape is not None else chain.shape
    return D[:m, :n]


def reference(op: DeBut, absolute: bool = False) -> np.ndarray:
    """The dense matrix of ``op`` from its factor values (or of their absolute values)."""
    return chain_dense(op.chain, op.factors, op.shape, absolute)


def error_depth(chain: Chain) -> int:
    """Number of rounding steps along one path of the product (sums of ``s`` terms)."""
    return sum(f.s for f in chain) + len(chain) + 1


def assert_product_close(actual, expected, bound, dtype, depth: int, what: str = "") -> None:
    """``|actual - expected| <= 2 depth u_c |bound|`` entrywise, ``u_c`` the unit roundoff.

    ``bound`` is the product of absolute values (``|F_N| ... |F_1| |X|``); the factor 2
    covers the rounding of ``expected`` itself (float64 reference for float64 results).
    Complex multiplication rounds a little more (``sqrt(2) * 2``): ``u_c = 4 u`` there.
    """
    dt = np.dtype(dtype)
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), (what, actual.shape, np.shape(expected))
    u = np.finfo(dt).eps / 2
    if dt.kind == "c":
        u *= 4
    tol = 2 * depth * u * np.asarray(bound) + 4 * np.finfo(dt).smallest_normal
    err = np.abs(actual.astype(_wide(dt)) - expected)
    bad = err > tol
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise AssertionError(
            f"{what}: {int(bad.sum())} entries outside the error bound, first at "
            f"{tuple(idx)}: got {actual[tuple(idx)]!r}, expected {expected[tuple(idx)]!r}, "
            f"error {err[tuple(idx)]:.3g} > bound {tol[tuple(idx)]:.3g}"
        )
