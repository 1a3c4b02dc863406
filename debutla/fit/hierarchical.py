"""Hierarchical fitting for chainable DeBut chains: batched rank-one block splits.

The output-side factor is split off first: every block that the remaining chain sees as
rank one gets its best rank-one approximation (batched), the unit vectors become the
factor's values and ``sigma v`` is carried on.  The index calculus (core tensor, value
layouts) lives in :mod:`._layout`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ._layout import Structure, batched, full_to_core, sqnorm

__all__ = ["rank_one_batched", "hierarchical_core", "hierarchical_balanced",
           "hierarchical_ranked"]

# ---------------------------------------------------------------------------------------
# batched best rank-one approximation
# ---------------------------------------------------------------------------------------

def _normalise_phase(u: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each vector (last axis) real positive."""
    idx = np.argmax(np.abs(u), axis=-1)[..., None]
    piv = np.take_along_axis(u, idx, axis=-1)
    a = np.abs(piv)
    ph = np.where(a > 0, piv / np.where(a > 0, a, 1), 1)
    return u / ph if np.iscomplexobj(u) else u * np.sign(np.where(a > 0, piv, 1))


def _unit(u: np.ndarray, dtype) -> np.ndarray:
    """Normalise the rows of ``u`` (B, r); zero rows become ``e_1``; fix the phase."""
    nrm = np.linalg.norm(u, axis=1)
    zero = ~(nrm > 0)
    if zero.any():
        u = u.copy()
        u[zero] = 0
        u[zero, 0] = 1
        nrm = np.where(zero, 1, nrm)
    u = (u / nrm[:, None]).astype(dtype, copy=False)
    return _normalise_phase(u)


def _split_in_place(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One split on the view ``X`` (B, r, t, s, c) without reordering it (needs r <= c).

    The blocks are ``X[b, :, t, s, :]``.  Returns ``u`` (B, t, s, r) unit vectors,
    ``w`` (B, s, t, c) = ``u^H`` times each block (laid out for the next split) and the
    squared residual.  The Gram matrices come from ``r (r + 1) / 2`` contiguous
    reductions over ``c`` (or one einsum for large ``r``): no copy of ``X``.
    """
    B, r, t, s, c = X.shape
    cplx = np.iscomplexobj(X)
    Xc = np.conj(X) if cplx else X
    if r <= 4:
        Gm = np.empty((B, t, s, r, r), dtype=X.dtype)
        for i in range(r):
            for j in range(i, r):
                g = np.einsum("btsc,btsc->bts", X[:, i], Xc[:, j])
                Gm[..., i, j] = g
                if j != i:
                    Gm[..., j, i] = np.conj(g) if cplx else g
    else:
        Gm = np.einsum("bitsc,bjtsc->btsij", X, Xc)
    _, vecs = batched(np.linalg.eigh, Gm.reshape(-1, r, r))
    u = _unit(vecs[:, :, -1], X.dtype).reshape(B, t, s, r)
    uc = np.conj(u) if cplx else u
    w = np.empty((B, s, t, c), dtype=X.dtype)
    wv = w.transpose(0, 2, 1, 3)  # (B, t, s, c) view
    np.multiply(uc[..., 0, None], X[:, 0], out=wv)
    for i in range(1, r):
        wv += uc[..., i, None] * X[:, i]
    # residual: cheap formula unless it is small against ||X||^2 (cancellation)
    nX2 = sqnorm(X)
    resid2 = nX2 - sqnorm(w)
    if resid2 < 1e-6 * nX2:
        resid2 = sum(sqnorm(X[:, i] - u[..., i, None] * wv) for i in range(r))
    return u, w, max(resid2, 0.0)


def rank_one_batched(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-one approximations ``M[b] ~ u[b] (x) w[b]`` of a batch of small matrices.

    Parameters
    ----------
    M : ndarray
        A batch of ``B`` matrices of size ``r x c``, shape ``(B, r, c)``.

    Returns
    -------
    u : ndarray
        ``(B, r)`` unit vectors (the top left singular vectors; ``e_1`` for a zero block), with the
        largest-magnitude entry real positive.
    w : ndarray
        ``(B, c)``: ``u^H M``: sigma times the conjugated top right singular vector, so that
        ``u w`` is the best rank-one approximation (Eckart-Young).

    Examples
    --------
    >>> M = np.array([[[3.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 4.0]]])
    >>> u, w = rank_one_batched(M)
    >>> np.round(u, 6).tolist(), np.round(w, 6).tolist()
    ([[1.0, 0.0], [0.447214, 0.894427]], [[3.0, 0.0], [2.236068, 4.472136]])

    Notes
    -----
    The top singular vector comes from the smaller Gram matrix (``M M^H`` when
    ``r <= c``, else ``M^H M``) with one batched ``numpy.linalg.eigh`` call; no SVD of a
    large matrix and no Python loop over blocks.  ``w = u^H M`` is then the exact
    projection onto ``span(u)``, so the residual is orthogonal to ``u``.
    """
    B, r, c = M.shape
    if r == 1:
        u = np.ones((B, 1), dtype=M.dtype)
        return u, M[:, 0, :].copy()
    MH = np.conj(M) if np.iscomplexobj(M) else M
    if r <= c:
        if c == 1:
            u = M[:, :, 0].copy()
        else:
            Gm = np.matmul(M, MH.transpose(0, 2, 1))
            _, vecs = batched(np.linalg.eigh, Gm)
            u = vecs[:, :, -1]
    else:
        Gm = np.matmul(MH.transpose(0, 2, 1), M)
        _, vecs = batched(np.linalg.eigh, Gm)
        u = np.matmul(M, vecs[:, :, -1:])[:, :, 0]
    u = _unit(u, M.dtype)
    uH = np.conj(u) if np.iscomplexobj(u) else u
    w = np.matmul(uH[:, None, :], M)[:, 0, :]
    return u, w


# ---------------------------------------------------------------------------------------
# the algorithm
# ---------------------------------------------------------------------------------------

def hierarchical_core(T: np.ndarray, rs) -> tuple[list[np.ndarray], list[float]]:
    """Fit a batch ``T`` of shape ``(G, Mc, Nc)`` with the dense core chain ``rs``.

    Peels the output-side factor first.  Returns the core values (application order,
    shapes ``(G, nb^c_k, r_k, s_k, t^c_k)``) and the squared error of each split.
    """
    G, Mc, Nc = T.shape
    N = len(rs)
    vals: list[np.ndarray] = [T] * N  # placeholders, all replaced below
    step_err2: list[float] = []
    nb = 1
    cur = T
    for k in range(N - 1, 0, -1):
        r, s = rs[k]
        t = Mc // math.prod(x for x, _ in rs[k:])
        ncr = math.prod(y for _, y in rs[:k])
        u, w, resid2 = _split_blocks(cur.reshape(G * nb, r, t, s, ncr))
        vals[k] = np.ascontiguousarray(u.reshape(G, nb, t, s, r).transpose(0, 1, 4, 3, 2))
        step_err2.append(resid2)
        # carry sigma * v on: batch (G, nb, s) -> new nb; rows t -> (r_{k-1}, t_{k-1})
        cur = w.reshape(G, nb * s, t, ncr)
        nb = nb * s
    r1, s1 = rs[0]
    X = cur.reshape(G, nb, r1, 1, s1)  # t^c_1 = 1, ncr = s_1
    vals[0] = np.ascontiguousarray(X.transpose(0, 1, 2, 4, 3))
    return vals, step_err2


# ---------------------------------------------------------------------------------------
# balanced order (with frame normalisation)
# ---------------------------------------------------------------------------------------

def _split_blocks(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rank-one blocks of ``X`` (B, r, t, s, c), blocks ``X[b, :, t, s, :]``.

    Returns ``u`` (B, t, s, r) unit vectors, ``w`` (B, s, t, c) and the squared residual.
    """
    B, r, t, s, c = X.shape
    if r <= c:
        return _split_in_place(X)
    blocks = X.transpose(0, 3, 2, 1, 4).reshape(B * s * t, r, c)
    u, w = rank_one_batched(blocks)
    resid2 = sqnorm(blocks - u[:, :, None] * w[:, None, :])
    u = u.reshape(B, s, t, r).transpose(0, 2, 1, 3)
    return u, w.reshape(B, s, t, c), max(resid2, 0.0)


def _safe(nrm: np.ndarray) -> np.ndarray:
    return np.where(nrm > 0, nrm, 1.0)


def hierarchical_balanced(T: np.ndarray, st: Structure):
    """Balanced-tree hierarchical fit of the core batch ``T`` (:func:`core_tensor`).

    Each node holds the product of a range ``lo..hi`` of factors as a tensor
    ``N[b, I, t, J]`` (block ``b = j_{>hi}``, diagonal ``t = i_{<lo}``, rows
    ``I = (i_hi .. i_lo)``, columns ``J``).  A node is split at its middle into a batch of
    rank-one blocks, as in the left-to-right order.  Before each split the nodes on its
    output side are made column-unit and those on its input side row-unit (scalings
    pushed along the chain, the product unchanged), so that, as in the left-to-right
    order, a split's error is not amplified.  Unlike the left-to-right order, a later
    split's error is not orthogonal to an earlier one when the earlier split's unit
    vectors end up inside a node that is split again, so the squared split errors need
    not add up to the squared total.

    Returns ``(core_vals, split_errors2)``.
    """
    A, D, Mc, Nc = st.A, st.D, st.Mc, st.Nc
    rs = st.rs
    root = T.reshape(A, D, Mc, Nc).transpose(0, 2, 1, 3)  # (b=a, I, t=d, J)
    nodes: list[tuple[int, int, np.ndarray]] = [(len(rs) - 1, 0, np.ascontiguousarray(root))]
    errs: list[float] = []

    def col_unit(i: int) -> None:  # node i column-unit, norms into node i + 1
        hi, lo, N = nodes[i]
        B, MI, Tn, NJ = N.shape
        c = np.sqrt(np.einsum("bitj,bitj->btj", N, np.conj(N)).real)  # (B, T, J)
        c = _safe(c).astype(N.real.dtype)
        nodes[i] = (hi, lo, N / c[:, None])
        h2, l2, Nr = nodes[i + 1]
        Nr = Nr.reshape(B, NJ, Tn, -1) * c.transpose(0, 2, 1)[..., None]
        nodes[i + 1] = (h2, l2, Nr.reshape(nodes[i + 1][2].shape))

    def row_unit(i: int) -> None:  # node i row-unit, norms into node i - 1
        hi, lo, N = nodes[i]
        B, MI, Tn, NJ = N.shape
        rn = np.sqrt(np.einsum("bitj,bitj->bit", N, np.conj(N)).real)  # (B, I, T)
        rn = _safe(rn).astype(N.real.dtype)
        nodes[i] = (hi, lo, N / rn[..., None])
        h2, l2, Nl = nodes[i - 1]
        BL, IL, TL, JL = Nl.shape
        nodes[i - 1] = (h2, l2, Nl * rn.reshape(BL, JL, TL).transpose(0, 2, 1)[:, None])

    def split(i: int) -> None:
        for j in range(i):
            col_unit(j)
        for j in range(len(nodes) - 1, i, -1):
            row_unit(j)
        hi, lo, N = nodes[i]
        h = lo + (hi - lo) // 2  # bottom = lo..h, top = h+1..hi
        Itop = int(np.prod([r for r, _ in rs[h + 1:hi + 1]]))
        Jtop = int(np.prod([s for _, s in rs[h + 1:hi + 1]]))
        B, MI, Tn, NJ = N.shape
        Ibot, Jbot = MI // Itop, NJ // Jtop
        X = N.reshape(B, Itop, Ibot * Tn, Jtop, Jbot)
        u, w, e2 = _split_blocks(X)
        errs.append(e2)
        top = np.ascontiguousarray(u.transpose(0, 3, 1, 2))  # (B, Itop, Ibot T, Jtop)
        bot = w.reshape(B * Jtop, Ibot, Tn, Jbot)
        nodes[i:i + 1] = [(hi, h + 1, top), (h, lo, bot)]

    def process(i: int) -> int:
        """Split node i recursively; returns how many leaves it became."""
        hi, lo, _ = nodes[i]
        if hi == lo:
            return 1
        split(i)
        n_top = process(i)
        return n_top + process(i + n_top)

    process(0)
    full = []
    for hi, lo, N in reversed(nodes):  # input side first
        full.append(np.ascontiguousarray(N.transpose(0, 1, 3, 2)))  # (nb, r, s, t)
    return full_to_core(full, st), errs


# ---------------------------------------------------------------------------------------
# any chainable chain: splits of rank rho (truncated SVDs)
# ---------------------------------------------------------------------------------------

def _support(spec) -> Any:
    """The support of one factor as a CSR matrix of ones."""
    import scipy.sparse as sp

    nb, r, s, t = spec.value_shape
    b, i, j, k = np.indices((nb, r, s, t)).reshape(4, -1)
    return sp.csr_matrix((np.ones(b.size, dtype=np.int8),
                          (b * r * t + i * t + k, b * s * t + j * t + k)),
                         shape=(spec.p, spec.q))


@functools.lru_cache(maxsize=2)
def _prefix_supports(chain) -> list[np.ndarray]:
    """``out[k]``: the support (bool, ``q_k x Q``) of ``R_{k-1} ... R_1`` for ``k >= 1``.

    Cached for the last two chains (a search or repeated fits of one chain).
    """
    out: list[Any] = [None]
    S = _support(chain[0])
    for k in range(1, len(chain)):
        out.append(S.toarray() > 0)
        S = (_support(chain[k]).astype(np.int64) @ S.astype(np.int64))
        S.data[:] = 1
    return out


def hierarchical_ranked(W: np.ndarray, chain, ranks) -> tuple[list[np.ndarray], list[float]]:
    """Hierarchical fit of the ``P x Q`` matrix ``W`` for a chainable chain of any split rank.

    Parameters
    ----------
    W : ndarray
        The (padded) matrix, user orientation.
    chain : Chain
        A chain whose :func:`~._layout.split_ranks` are ``ranks``.
    ranks : tuple of int
        ``rho_k`` between factors ``k`` and ``k + 1``.

    Returns
    -------
    (values, split_errors2)
        Canonical ``(nb, r, s, t)`` values in application order and the squared error of
        each split, output side first.

    Notes
    -----
    Peel the output-side factor ``R_k`` off ``W_k = R_k M`` (``M`` the product of the
    factors before it).  A group ``g`` of ``R_k`` (block ``b``, diagonal ``t``) maps its
    ``s`` inputs to ``r`` outputs; a column ``c`` of ``M`` restricted to those inputs is
    supported on a set of ``rho`` of them, and chainability makes these sets a partition.
    So the rows of group ``g`` and the columns sharing one set form a block of rank at
    most ``rho``: its best rank-``rho`` approximation ``U (U^H B)`` (batched SVD) puts the
    ``r x rho`` orthonormal ``U`` into ``R_k`` and carries ``U^H B`` on as ``M``'s entries.
    Because every group of ``R_k`` has orthonormal columns, later errors are not
    amplified and are orthogonal to this one: ``||W - D||^2`` is the sum of the squared
    split errors, exact on DeBut products, within ``sqrt(N - 1)`` of the optimum (Le,
    Zheng, Riccietti, Gribonval 2025).  With all ranks 1 it computes what
    :func:`hierarchical_core` computes, more slowly.

    Examples
    --------
    >>> from debutla import Chain, DeBut
    >>> chain = Chain.from_ks([(1, 4, 4, 8), (2, 8, 8, 2)])
    >>> W = DeBut.random(chain, seed=0).to_dense()
    >>> vals, errs = hierarchical_ranked(W, chain, (2,))
    >>> bool(np.allclose(DeBut(chain, vals).to_dense(), W))
    True
    """
    N = len(chain)
    prefix = _prefix_supports(chain)
    cur = W
    vals: list[np.ndarray] = [W] * N  # placeholders, all replaced below
    errs: list[float] = []
    cplx = np.iscomplexobj(W)
    for k in range(N - 1, 0, -1):
        spec, rho = chain[k], ranks[k - 1]
        nb, r, s, t = spec.value_shape
        G, Q = nb * t, cur.shape[1]
        g_b, g_t = np.divmod(np.arange(G), t)
        rows = (g_b * r * t + g_t)[:, None] + np.arange(r)[None, :] * t      # (G, r)
        inner = (g_b * s * t + g_t)[:, None] + np.arange(s)[None, :] * t     # (G, s)
        S = prefix[k][inner]                                                  # (G, s, Q)
        lead = np.where(S.any(axis=1), np.argmax(S, axis=1), s)              # (G, Q)
        order = np.argsort(lead, axis=1, kind="stable")
        n_in = int(np.count_nonzero(lead[0] < s))
        n_pat = s // rho
        ncol = n_in // n_pat
        cols = order[:, :n_in].reshape(G, n_pat, ncol)                       # (G, p, c)
        J = np.argsort(~S[np.arange(G)[:, None], :, cols[:, :, 0]], axis=-1,
                       kind="stable")[..., :rho]                              # (G, p, rho)
        B = cur[rows[:, None, :, None], cols[:, :, None, :]]                  # (G, p, r, c)
        U, _, _ = batched(np.linalg.svd, B.reshape(-1, *B.shape[-2:]),
                           full_matrices=False)
        U = U.reshape(B.shape[:-2] + U.shape[-2:])
        U = U[..., :rho]
        if U.shape[-1] < rho:  # fewer rows or columns than the rank: pad with zeros
            pad = np.zeros(U.shape[:-1] + (rho - U.shape[-1],), dtype=U.dtype)
            U = np.concatenate([U, pad], axis=-1)
        U = np.swapaxes(_normalise_phase(np.swapaxes(U, -1, -2)), -1, -2)
        carry = np.swapaxes(U.conj() if cplx else U, -1, -2) @ B             # (G, p, rho, c)
        err2 = sqnorm(cur) - sqnorm(carry)
        if err2 < 1e-6 * sqnorm(cur):
            err2 = sqnorm(B - U @ carry) + max(sqnorm(cur) - sqnorm(B), 0.0)
        errs.append(max(err2, 0.0))
        V = np.zeros((nb, t, r, s), dtype=W.dtype)
        V[g_b[:, None, None], g_t[:, None, None], :, J] = np.moveaxis(U, -2, -1)
        vals[k] = np.ascontiguousarray(V.transpose(0, 2, 3, 1))
        nxt = np.zeros((spec.q, Q), dtype=W.dtype)
        nxt[inner[np.arange(G)[:, None, None], J][..., None],
            cols[:, :, None, :]] = carry
        cur = nxt
    spec = chain[0]
    nb, r, s, t = spec.value_shape
    b, i, j, kk = np.indices((nb, r, s, t))
    vals[0] = np.ascontiguousarray(cur[b * r * t + i * t + kk, b * s * t + j * t + kk])
    return vals, errs
