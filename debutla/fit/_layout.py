"""Layouts shared by the fitting methods: structure, core tensor, values, paths, norms.

Both :mod:`.hierarchical` and :mod:`.als` import this module; it imports neither.

Index calculus (see ``docs/factorize.rst``)
-------------------------------------------
Call a chain *t-chained* when ``t_{k+1} = r_k t_k`` for every k (application order).
Write ``D = t_1`` and ``A = nb_N``; the "core" chain has ``t^c_k = t_k / D`` and
``nb^c_k = nb_k / A`` (so ``t^c_1 = 1`` and ``nb^c_N = 1``: a dense chain).  With
``Mc = prod r_k`` and ``Nc = prod s_k`` the product is a batch of ``G = A * D``
independent ``Mc x Nc`` dense problems::

    W[a*Mc*D + I*D + d, a*Nc*D + J*D + d] = T[a, d, I, J]     (all other entries are 0)

and, writing ``I = (i_N, ..., i_1)`` and ``J = (j_N, ..., j_1)`` in mixed radix with
``i_1``/``j_1`` fastest, every entry of a core product is one path through the chain::

    T[g, I, J] = prod_k V_k[g, j_{>k}, i_k, j_k, i_{<k}]

where ``j_{>k}`` is the core block index ``b`` and ``i_{<k}`` the core diagonal index.
Full canonical values are ``V_k[a*nb^c + b, i, j, k'*D + d] = Vc_k[(a, d), b, i, j, k']``.
A dense chain has ``A = D = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..chain import Chain

__all__ = ["Structure", "analyse_chain", "not_chainable_message", "core_tensor",
           "core_to_dense", "core_to_full", "full_to_core", "user_factors", "fitted_factors",
           "extend_paths", "core_product", "sqnorm", "split_ranks", "batched"]


@dataclass(frozen=True)
class Structure:
    """How a chainable chain maps onto a batch of dense core problems.

    Attributes
    ----------
    chain : Chain
        The chain that is actually fitted (``chain`` itself, or its transpose when
        ``transposed``).
    transposed : bool
        True when the user's chain is the transpose of a t-chained chain; the fit then
        runs on ``W.T`` and the factors are transposed back.
    A, D : int
        Batch sizes (``nb`` of the last factor and ``t`` of the first).
    rs : tuple of (int, int)
        The ``(r_k, s_k)`` of the fitted chain, application order.
    """

    chain: Chain
    transposed: bool
    A: int
    D: int
    rs: tuple[tuple[int, int], ...]

    @property
    def Mc(self) -> int:
        """Rows of one core problem, ``prod r_k``."""
        return math.prod(r for r, _ in self.rs)

    @property
    def Nc(self) -> int:
        """Columns of one core problem, ``prod s_k``."""
        return math.prod(s for _, s in self.rs)

    @property
    def G(self) -> int:
        """Number of independent core problems, ``A * D``."""
        return self.A * self.D


def _t_chained(chain: Chain) -> bool:
    f = chain.factors
    return all(f[i].t == f[i - 1].r * f[i - 1].t for i in range(1, len(f)))


def analyse_chain(chain: Chain) -> Structure | None:
    """The :class:`Structure` of a chainable chain, or None when it is not chainable.

    Chainable here means: the chain or its transpose is t-chained
    (``t_{k+1} = r_k t_k`` for every k).  Dense chains are t-chained with ``A = D = 1``;
    the transpose of a dense chain (e.g. ``DeBut.T``) is handled through the transpose.

    Examples
    --------
    >>> st = analyse_chain(Chain.parse("16 <-(2,2,8)- 16 <-(2,6,4)- 48 "
    ...                                "<-(1,2,4)- 96 <-(4,3,1)- 72"))
    >>> st.transposed, st.A, st.D, st.rs
    (False, 1, 1, ((4, 3), (1, 2), (2, 6), (2, 2)))
    >>> analyse_chain(Chain.parse("4 <-(4,4,1)- 4 <-(4,4,1)- 4")) is None
    True
    """
    for transposed, c in ((False, chain), (True, chain.transpose())):
        if _t_chained(c):
            f = c.factors
            return Structure(c, transposed, f[-1].nb, f[0].t,
                             tuple((x.r, x.s) for x in f))
    return None


def not_chainable_message(chain: Chain, what: str) -> str:
    """The error for a chain the hierarchical method cannot split."""
    return (
        f"{what}: chain {chain} is not chainable: for neither it nor its transpose is "
        f"rho_k = nb_(k+1) s_(k+1) / nb_k = r_k t_k / t_(k+1) a whole number with "
        f"nb_(k+1) dividing nb_k and t_k dividing t_(k+1) for every factor k (Le, Zheng, "
        f"Riccietti, Gribonval; rho_k = 1 means t_(k+1) = r_k * t_k, as in every dense "
        f"chain).  Use method='als' (matrix-free least squares for any valid chain) "
        f"or a dense chain from debutla.design_chain"
    )


def sqnorm(x: np.ndarray) -> float:
    """``||x||_F^2`` without BLAS (no thread wake-up cost on small arrays)."""
    v = np.ascontiguousarray(x)
    if np.iscomplexobj(v):
        v = v.view(v.real.dtype)
    v = v.reshape(-1)
    if v.dtype == np.float32:  # accumulate single precision in double
        return float(np.einsum("i,i->", v, v, dtype=np.float64))
    return float(np.einsum("i,i->", v, v))


def _core_view(W: np.ndarray, st: Structure) -> np.ndarray:
    """The support entries of the ``P x Q`` matrix ``W`` as a strided ``(A, D, Mc, Nc)`` view."""
    A, D, Mc, Nc = st.A, st.D, st.Mc, st.Nc
    W6 = W.reshape(A, Mc, D, A, Nc, D)
    s = W6.strides
    return np.lib.stride_tricks.as_strided(
        W6, shape=(A, D, Mc, Nc), strides=(s[0] + s[3], s[2] + s[5], s[1], s[4]),
        writeable=W.flags.writeable)


def core_tensor(W: np.ndarray, st: Structure) -> tuple[np.ndarray, float]:
    """Map the (padded, possibly transposed) matrix onto the core batch ``(G, Mc, Nc)``.

    Returns the tensor (a view when ``A = D = 1``) and the squared norm of the entries of
    ``W`` outside the chain's support (they are forced to zero in any DeBut product).
    """
    if st.G == 1:
        return W.reshape(1, st.Mc, st.Nc), 0.0
    T = np.ascontiguousarray(_core_view(np.ascontiguousarray(W), st))
    T = T.reshape(st.G, st.Mc, st.Nc)
    return T, max(sqnorm(W) - sqnorm(T), 0.0)


def core_to_dense(T: np.ndarray, st: Structure) -> np.ndarray:
    """Inverse of :func:`core_tensor`: the ``P x Q`` matrix (fitted orientation) of a core batch.

    Entries outside the chain's support are zero.

    Examples
    --------
    >>> st = analyse_chain(Chain.parse("4 <-(1,1,1)- 4 <-(1,1,1)- 4"))
    >>> st.G, core_to_dense(np.arange(1.0, 5.0).reshape(4, 1, 1), st).diagonal().tolist()
    (4, [1.0, 2.0, 3.0, 4.0])
    """
    A, D, Mc, Nc = st.A, st.D, st.Mc, st.Nc
    if st.G == 1:
        return T.reshape(Mc, Nc)
    W = np.zeros((A * Mc * D, A * Nc * D), dtype=T.dtype)
    _core_view(W, st)[...] = T.reshape(A, D, Mc, Nc)
    return W


def core_to_full(vals: list[np.ndarray], st: Structure) -> list[np.ndarray]:
    """Core values ``(G, nb^c, r, s, t^c)`` to canonical ``(nb, r, s, t)`` of the fitted chain."""
    A, D = st.A, st.D
    out = []
    for Vc in vals:
        G, nbc, r, s, tc = Vc.shape
        if A == 1 and D == 1:
            V = Vc.reshape(nbc, r, s, tc)
        else:
            V = Vc.reshape(A, D, nbc, r, s, tc).transpose(0, 2, 3, 4, 5, 1)
            V = V.reshape(A * nbc, r, s, tc * D)
        out.append(np.ascontiguousarray(V))
    return out


def full_to_core(vals, st: Structure) -> list[np.ndarray]:
    """Inverse of :func:`core_to_full` (values in the fitted chain's order/layout)."""
    A, D = st.A, st.D
    out = []
    for V in vals:
        nb, r, s, t = V.shape
        nbc, tc = nb // A, t // D
        Vc = V.reshape(A, nbc, r, s, tc, D).transpose(0, 5, 1, 2, 3, 4)
        out.append(np.ascontiguousarray(Vc.reshape(A * D, nbc, r, s, tc)))
    return out


def user_factors(fitted: list[np.ndarray], st: Structure) -> list[np.ndarray]:
    """Factors of the fitted chain to factors of the user's chain (undo the transpose)."""
    if not st.transposed:
        return fitted
    return [np.ascontiguousarray(V.transpose(0, 2, 1, 3)) for V in reversed(fitted)]


def fitted_factors(user: list[np.ndarray], st: Structure) -> list[np.ndarray]:
    """Inverse of :func:`user_factors`."""
    if not st.transposed:
        return [np.asarray(V) for V in user]
    return [np.ascontiguousarray(np.asarray(V).transpose(0, 2, 1, 3)) for V in reversed(user)]


def extend_paths(V: np.ndarray, P: np.ndarray) -> np.ndarray:
    """One path step: ``P_{k+1}`` from ``V_k`` (G, nb, r, s, t) and ``P_k`` (G, nb, s, t, c).

    Returns shape ``(G, nb, r t, s c)``: ``P_{k+1}[g, b, (i, t), (j, c)] = V[g,b,i,j,t]
    P[g,b,j,t,c]`` (one path per entry).
    """
    G, nb, r, s, t = V.shape
    out = V.transpose(0, 1, 2, 4, 3)[..., None] * P.transpose(0, 1, 3, 2, 4)[:, :, None]
    return out.reshape(G, nb, r * t, s * P.shape[-1])


def core_product(vals: list[np.ndarray]) -> np.ndarray:
    """The dense products ``(G, Mc, Nc)`` of core values ``(G, nb, r, s, t)`` (O(m n)).

    Examples
    --------
    >>> V = [np.full((1, 1, 2, 2, 1), 2.0), np.full((1, 1, 1, 1, 2), 3.0)]
    >>> core_product(V).tolist()
    [[[6.0, 6.0], [6.0, 6.0]]]
    """
    G, nb, _, s, _ = vals[0].shape
    P = np.ones((G, nb, s, 1, 1), dtype=vals[0].dtype)
    for k, V in enumerate(vals):
        out = extend_paths(V, P)
        if k + 1 < len(vals):
            _, nb1, _, s1, t1 = vals[k + 1].shape
            P = out.reshape(G, nb1, s1, t1, out.shape[-1])
    return out.reshape(G, out.shape[2], out.shape[3])


def split_ranks(chain: Chain) -> tuple[int, ...] | None:
    """The split ranks of a chainable chain (Le, Zheng, Riccietti, Gribonval), else None.

    Between factor ``k`` and factor ``k + 1`` (application order) the rank is
    ``rho_k = nb_{k+1} s_{k+1} / nb_k = r_k t_k / t_{k+1}``; the chain is chainable when
    every ``rho_k`` is a whole number, the two expressions agree, ``nb_{k+1}`` divides
    ``nb_k`` and ``t_k`` divides ``t_{k+1}``.  All ranks are 1 exactly for the
    t-chained chains of :func:`analyse_chain` (oriented as given).

    Examples
    --------
    >>> split_ranks(Chain.from_ks([(1, 4, 4, 8), (2, 8, 8, 2)]))
    (2,)
    >>> split_ranks(Chain.parse("8 <-(2,2,1)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8")) is None
    True
    """
    f = chain.factors
    ranks = []
    for lo, hi in zip(f[:-1], f[1:]):
        a, b = hi.nb * hi.s, lo.r * lo.t
        if a % lo.nb or b % hi.t or lo.nb % hi.nb or hi.t % lo.t:
            return None
        if a // lo.nb != b // hi.t:
            return None
        ranks.append(a // lo.nb)
    return tuple(ranks)


_controller: list = []  # the threadpoolctl controller, created at first use (optional)


def batched(fn, G: np.ndarray, **kw):
    """``fn(G)`` (a NumPy decomposition) on a batch of small matrices, BLAS on one thread.

    LAPACK calls threaded BLAS inside each tiny decomposition; on a busy machine that
    made ``eigh`` of a batch of 1024 matrices 48 x 48 take 15 s instead of 0.8 s.  When
    ``threadpoolctl`` is installed BLAS is limited to one thread for the call (a
    process-wide setting, restored afterwards); otherwise the call runs as it is.
    """
    if not _controller:
        try:
            from threadpoolctl import ThreadpoolController
            _controller.append(ThreadpoolController())
        except ImportError:  # pragma: no cover - optional dependency
            _controller.append(None)
    ctl = _controller[0]
    if ctl is None or G.ndim < 3 or G.shape[0] < 2:
        return fn(G, **kw)
    with ctl.limit(limits=1, user_api="blas"):
        return fn(G, **kw)
