"""Alternating least squares for chainable DeBut chains, one exact LS solve per factor.

For a chainable chain (see :mod:`._layout`) every entry of a core product is the
product of exactly one value per factor::

    T[g, I, J] ~ prod_k V_k[g, j_{>k}, i_k, j_k, i_{<k}].

With all factors but ``k`` fixed, write ``Q_k`` for the product of the factors after
``k`` (output side) and ``P_k`` for the product of those before it (input side)::

    Q_k[g, i_{>k}, j_{>k}, (i_k, i_{<k})]      P_k[g, (j_{>k}, j_k), i_{<k}, j_{<k}]

Each value of factor ``k`` multiplies a disjoint set of entries, and on that set the
entry equals ``V_k * Q_k * P_k``: the least-squares problem for ``V_k`` is a set of
independent scalar problems with the closed form::

    V_k[g,b,i,j,t] = sum_{a,c} conj(Q[g,a,b,i,t] P[g,b,j,t,c]) W[g,(a,i,t),(b,j,c)]
                     / (sum_a |Q[g,a,b,i,t]|^2 * sum_c |P[g,b,j,t,c]|^2)

(the denominator factorises).  One update costs ``O(m n)``; the partial products
``P_{k+1} = V_k * P_k`` and ``Q_{k-1} = Q_k * V_k`` are elementwise products of the same
size, and a sweep in one direction leaves behind exactly the partial products the sweep
in the other direction needs.
"""

from __future__ import annotations

import numpy as np

from ._layout import batched, extend_paths, sqnorm

__all__ = ["ALSState", "WeightedALSState", "GeneralALSState"]


def _conj(x: np.ndarray) -> np.ndarray:
    return np.conj(x) if np.iscomplexobj(x) else x


def _abs2(x: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(x):
        return x.real * x.real + x.imag * x.imag
    return x * x


class ALSState:
    """ALS on a core batch ``T`` of shape ``(G, Mc, Nc)`` with the dense core chain ``rs``.

    ``vals[k]`` has shape ``(G, nb^c_k, r_k, s_k, t^c_k)``.  Call :meth:`sweep_up`
    (input side first) and :meth:`sweep_down` alternately; each returns the squared
    residual ``||T - product||_F^2`` of the new factors, computed from the product itself.
    """

    def __init__(self, T: np.ndarray, rs, vals: list[np.ndarray]) -> None:
        self.T = T
        self.rs = tuple(rs)
        self.N = len(rs)
        self.G = T.shape[0]
        self.vals = [np.ascontiguousarray(v, dtype=T.dtype) for v in vals]
        N = self.N
        r = [x for x, _ in rs]
        s = [y for _, y in rs]
        # core t_k, nb_k, R_{>k}, S_{<k}
        self.t = [int(np.prod(r[:k])) for k in range(N)]
        self.nb = [int(np.prod(s[k + 1:])) for k in range(N)]
        self.Rgt = [int(np.prod(r[k + 1:])) for k in range(N)]
        self.Slt = [int(np.prod(s[:k])) for k in range(N)]
        self.Mc = int(np.prod(r))
        self.Nc = int(np.prod(s))
        # P[k] : product of factors < k, shape (G, nb_k, s_k, t_k, S_<k)
        # Q[k] : product of factors > k, shape (G, R_>k, nb_k, r_k, t_k)
        self.P: list[np.ndarray | None] = [None] * N
        self.Q: list[np.ndarray | None] = [None] * N
        self._have: str | None = None  # "P" if all P are current, "Q" if all Q are current
        # the factor updated last: its update is exact given the others, so a sweep that
        # would start by updating it again (up after down, down after up) skips it
        self._last: int | None = None

    # -- partial products --------------------------------------------------------------
    def _Pk(self, k: int) -> np.ndarray:
        """``P[k]``, which a sweep or :meth:`_build_all_P` must have built."""
        P = self.P[k]
        if P is None:
            raise RuntimeError(f"internal: ALS partial product P[{k}] used before it was built")
        return P

    def _Qk(self, k: int) -> np.ndarray:
        """``Q[k]``, which a sweep or :meth:`_build_all_Q` must have built."""
        Q = self.Q[k]
        if Q is None:
            raise RuntimeError(f"internal: ALS partial product Q[{k}] used before it was built")
        return Q

    def _next_P(self, k: int) -> np.ndarray:
        """P_{k+1} from P_k and V_k, shape (G, nb_k, r_k t_k, s_k S_<k)."""
        return extend_paths(self.vals[k], self._Pk(k))

    def _next_Q(self, k: int) -> np.ndarray:
        """Q_{k-1} from Q_k and V_k, shape (G, R_>k r_k, nb_k s_k, t_k)."""
        G, V, Q = self.G, self.vals[k], self._Qk(k)
        nb, (r, s), t, a = self.nb[k], self.rs[k], self.t[k], self.Rgt[k]
        out = (Q.transpose(0, 1, 3, 2, 4)[:, :, :, :, None, :]
               * V.transpose(0, 2, 1, 3, 4)[:, None])
        return out.reshape(G, a * r, nb * s, t)

    def _P_first(self) -> np.ndarray:
        return np.ones((self.G, self.nb[0], self.rs[0][1], 1, 1), dtype=self.T.dtype)

    def _Q_last(self) -> np.ndarray:
        r, t = self.rs[-1][0], self.t[-1]
        return np.ones((self.G, 1, 1, r, t), dtype=self.T.dtype)

    def _shape_P(self, k: int, X: np.ndarray) -> np.ndarray:
        return X.reshape(self.G, self.nb[k], self.rs[k][1], self.t[k], self.Slt[k])

    def _shape_Q(self, k: int, X: np.ndarray) -> np.ndarray:
        return X.reshape(self.G, self.Rgt[k], self.nb[k], self.rs[k][0], self.t[k])

    def _build_all_P(self) -> None:
        self.P[0] = self._P_first()
        for k in range(self.N - 1):
            self.P[k + 1] = self._shape_P(k + 1, self._next_P(k))

    def _build_all_Q(self) -> None:
        self.Q[-1] = self._Q_last()
        for k in range(self.N - 1, 0, -1):
            self.Q[k - 1] = self._shape_Q(k - 1, self._next_Q(k))

    # -- one factor ----------------------------------------------------------------------
    def _numerator(self, k: int, T: np.ndarray) -> np.ndarray:
        """``sum_{a,c} conj(Q P) T`` for every value of factor ``k``: (G, nb, r, s, t)."""
        G = self.G
        (r, s), t, nb, a, c = self.rs[k], self.t[k], self.nb[k], self.Rgt[k], self.Slt[k]
        P, Q = self._Pk(k), self._Qk(k)
        W7 = T.reshape(G, a, r, t, nb, s, c)
        # num[g,b,i,j,t] = sum_{a,c} conj(Q[g,a,b,i,t] P[g,b,j,t,c]) W[g,a,i,t,b,j,c],
        # contracting the longer of a and c first (smaller intermediate)
        if c > a:
            X = np.einsum("gaitbjc,gbjtc->gaitbj", W7, _conj(P))
            num = np.einsum("gabit,gaitbj->gbijt", _conj(Q), X)
        else:
            Y = np.einsum("gabit,gaitbjc->gitbjc", _conj(Q), W7)
            num = np.einsum("gitbjc,gbjtc->gbijt", Y, _conj(P))
        return num

    def _update(self, k: int) -> None:
        P, Q, V = self._Pk(k), self._Qk(k), self.vals[k]
        num = self._numerator(k, self.T)
        qq = _abs2(Q).sum(axis=1)            # (G, nb, r, t)
        pp = _abs2(P).sum(axis=-1)           # (G, nb, s, t)
        den = qq[:, :, :, None, :] * pp[:, :, None, :, :]   # (G, nb, r, s, t)
        # a value whose paths all carry zero weight in the other factors is not
        # determined by the data: keep its current value (no NaN, no collapse)
        tiny = np.finfo(den.dtype).tiny
        ok = den > tiny
        newV = np.where(ok, num / np.where(ok, den, 1), V)
        self.vals[k] = np.ascontiguousarray(newV.astype(self.T.dtype, copy=False))

    def _residual2(self, prod: np.ndarray) -> float:
        return sqnorm(prod.reshape(self.T.shape) - self.T)

    # -- single updates and sweeps ----------------------------------------------------------
    def update(self, k: int) -> None:
        """Replace factor ``k`` by its least-squares update (the others fixed)."""
        self._build_all_P()
        self._build_all_Q()
        self._update(k)
        self._have = None
        self._last = k

    def residual2(self) -> float:
        """The squared objective of the current values (one product pass)."""
        self._build_all_P()
        self._have = "P"
        return self._residual2(self._next_P(self.N - 1))

    def sweep_up(self) -> float:
        """Update factors input side first; returns the new squared residual."""
        if self._have != "Q":
            self._build_all_Q()
        self.P[0] = self._P_first()
        for k in range(self.N):
            if k != self._last:
                self._update(k)
            nxt = self._next_P(k)
            if k + 1 < self.N:
                self.P[k + 1] = self._shape_P(k + 1, nxt)
        self._have = "P"
        self._last = self.N - 1
        return self._residual2(nxt)

    def sweep_down(self) -> float:
        """Update factors output side first; returns the new squared residual."""
        if self._have != "P":
            self._build_all_P()
        self.Q[-1] = self._Q_last()
        for k in range(self.N - 1, -1, -1):
            if k != self._last:
                self._update(k)
            nxt = self._next_Q(k)
            if k > 0:
                self.Q[k - 1] = self._shape_Q(k - 1, nxt)
        self._have = "Q"
        self._last = 0
        return self._residual2(nxt)


#: Systems at least this large are built and solved one at a time (Cholesky, BLAS on every
#: thread) instead of all at once (one batched LU call, BLAS on one thread; ``batched``).
_LOOP_MIN = 256


def _ridge(dmax):
    """``1e-12`` times the largest diagonal entry (``1e-12`` for a zero block)."""
    return 1e-12 * np.where(dmax > 0, dmax, 1.0)


def _ridge_solve_rows(H: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``delta`` with ``delta[k] (H[k] + ridge_k I) = rho[k]`` (row vectors), batched LU.

    ``ridge_k`` is :func:`_ridge` of ``H[k]``: directions the data does not determine
    stay where they are.  ``H`` is modified in place.
    """
    n = H.shape[-1]
    idx = np.arange(n)
    H[:, idx, idx] += _ridge(np.abs(np.einsum("kyy->ky", H)).max(axis=1))[:, None]
    # delta H = rho (row vectors)  <=>  H^T delta^T = rho^T
    return batched(np.linalg.solve, np.swapaxes(H, 1, 2), b=rho[:, :, None])[:, :, 0]


def _ridge_solve_row(H: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """One system of :func:`_ridge_solve_rows`, ``H`` Hermitian: Cholesky, LU if it fails.

    ``delta H = rho``  <=>  ``H^T delta^T = rho^T`` and ``H^T = conj(H)``.  ``H`` is
    modified in place.
    """
    from scipy.linalg import cho_factor, cho_solve

    H.flat[:: H.shape[0] + 1] += _ridge(np.abs(np.diagonal(H)).max())
    try:
        f = cho_factor(H, lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # not numerically positive definite
        return np.linalg.solve(H.T, rho)
    return np.conj(cho_solve(f, np.conj(rho), check_finite=False))


class WeightedALSState(ALSState):
    """Closed-form ALS for the data objective ``tr((T - D) C (T - D)^H)`` (one core problem).

    ``C = L L^H`` (``Nc x Nc``) couples the columns, so the values of factor ``k`` are no
    longer independent scalars: for each ``(i_k, i_{<k})`` the ``nb s`` values
    ``x[b, j]`` solve ``x H = g`` with::

        H[(b,j),(b',j')] = sum_a Q[a,b] conj(Q[a,b'])
                           * sum_{c,c'} P[b,j,c] C[(b,j,c),(b',j',c')] conj(P[b',j',c'])
        g[(b,j)]         = sum_{a,c} conj(Q[a,b] P[b,j,c]) (T C)[(a,i,t),(b,j,c)]

    (the unweighted update with ``T C`` in place of ``T`` and ``H`` in place of the
    diagonal denominator).  Systems of size ``nb_k s_k = n / S_{<k}``: ``r_1`` systems of
    size ``n`` for the input-side factor, many small ones for the output side.  The solve
    moves the current values by the least correction (a relative ridge of ``1e-12`` on
    ``H`` keeps directions the data does not determine where they are), so the objective
    never increases.  Only ``G = 1`` (dense chains, not transposed).
    """

    def __init__(self, T: np.ndarray, rs, vals: list[np.ndarray], C: np.ndarray) -> None:
        super().__init__(T, rs, vals)
        self.C = C
        self.TC = (T[0] @ C)[None]

    def _update(self, k: int) -> None:
        (r, s), t, nb, c = self.rs[k], self.t[k], self.nb[k], self.Slt[k]
        P, Q, V = self._Pk(k)[0], self._Qk(k)[0], self.vals[k][0]  # G = 1
        g = self._numerator(k, self.TC)[0].transpose(1, 3, 0, 2).reshape(r * t, nb * s)
        Qm = Q.transpose(2, 3, 1, 0)                                # (r, t, nb, a)
        qq = Qm @ np.swapaxes(_conj(Qm), -1, -2)                    # (r, t, nb, nb)
        P3 = P.transpose(0, 1, 3, 2).reshape(nb * s, c, t)        # (x=(b,j), c, t)
        x = nb * s
        C4 = self.C.reshape(x, c, x, c).transpose(2, 0, 1, 3).reshape(x, x * c, c)
        A = (C4 @ _conj(P3)).reshape(x, x, c, t).transpose(1, 2, 3, 0)  # (x, c, t, y)
        pcp = np.einsum("xct,xcty->txy", P3, A).reshape(t, nb, s, nb, s)
        x0 = V.transpose(1, 3, 0, 2).reshape(r * t, nb * s)       # (i, t) x (b, j)
        if nb * s < _LOOP_MIN:
            H = (qq[:, :, :, None, :, None] * pcp[None]).reshape(r * t, nb * s, nb * s)
            rho = g - np.einsum("ky,kyz->kz", x0, H)
            delta = _ridge_solve_rows(H, rho)
        else:
            delta = self._large_systems(qq, pcp, g, x0)
        x = (x0 + delta).reshape(r, t, nb, s).transpose(2, 0, 3, 1)
        self.vals[k] = np.ascontiguousarray(x[None].astype(self.T.dtype, copy=False))

    @staticmethod
    def _large_systems(qq: np.ndarray, pcp: np.ndarray, g: np.ndarray,
                       x0: np.ndarray) -> np.ndarray:
        """The corrections ``delta`` of :meth:`_update`, one system at a time.

        ``H_k = qq[i, t] (x) pcp[t]`` (an elementwise product over ``(b, j), (b', j')``)
        is built for one ``k = (i, t)`` at a time into one buffer (memory ``(nb s)^2``,
        not ``r t (nb s)^2``), in the order whose innermost axis is the longer of ``nb``
        and ``s`` (a symmetric permutation of the unknowns, undone on the result), and
        solved by Cholesky.
        """
        r, t, nb, _ = qq.shape
        s = pcp.shape[2]
        n = nb * s
        swap = nb >= s  # unknowns ordered (j, b): the long axis b innermost
        P5 = pcp.transpose(0, 2, 1, 4, 3).copy() if swap else pcp  # (t, s, nb, s, nb)
        buf = np.empty((n, n), dtype=np.result_type(qq, pcp))
        delta = np.empty((r * t, n), dtype=np.result_type(buf, g))
        for k in range(r * t):
            i, tk = divmod(k, t)
            q = qq[i, tk]
            if swap:
                np.multiply(P5[tk], q[None, :, None, :], out=buf.reshape(s, nb, s, nb))
                gk = g[k].reshape(nb, s).T.ravel()
                xk = x0[k].reshape(nb, s).T.ravel()
            else:
                np.multiply(P5[tk], q[:, None, :, None], out=buf.reshape(nb, s, nb, s))
                gk, xk = g[k], x0[k]
            dk = _ridge_solve_row(buf, gk - xk @ buf)
            delta[k] = dk.reshape(s, nb).T.ravel() if swap else dk
        return delta

    def _residual2(self, prod: np.ndarray) -> float:
        E = self.T[0] - prod.reshape(self.T.shape)[0]
        return float(np.real(np.sum((E @ self.C) * _conj(E))))


# ---------------------------------------------------------------------------------------
# any valid chain: matrix-free least squares (LSQR) per factor
# ---------------------------------------------------------------------------------------

class GeneralALSState:
    """ALS for any valid chain: each factor update is a matrix-free LSQR solve.

    For factor ``k`` the product is ``L S(V_k) R`` with ``L = R_N ... R_{k+1}`` and
    ``R = R_{k-1} ... R_1`` (DeBut operators of the sub-chains) and ``S`` the scatter of
    the values into the factor's support.  The map ``V_k -> L S(V_k) R`` and its adjoint
    ``Y -> support entries of L^H Y R^H`` are applied with operator products (``R`` as a
    dense ``q_k x n`` matrix, computed once per update); LSQR solves for the correction
    from the current values, so the residual never increases.  No design matrix is
    formed.  Cost per LSQR iteration: ``O((nnz_k + nnz_L) n)``.

    With ``weight`` (a ``Q x Q`` matrix ``L``) the objective is ``||(W - D) L||_F``: the
    same solves with ``R L`` in place of ``R`` and ``W L`` in place of ``W`` (the
    data-aware fit, ``L L^H = X^T conj(X)``).
    """

    def __init__(self, W: np.ndarray, chain, vals: list[np.ndarray], *,
                 weight: np.ndarray | None = None, iter_lim: int = 50,
                 rtol: float = 1e-10) -> None:
        self.W = W
        self.weight = weight
        self.target = W if weight is None else W @ weight
        self.chain = chain
        self.N = len(chain)
        self.vals = [np.ascontiguousarray(v, dtype=W.dtype) for v in vals]
        self.iter_lim = iter_lim
        self.rtol = rtol

    def _op(self, lo: int, hi: int):
        from ..operator import DeBut

        if lo >= hi:
            return None
        return DeBut(self.chain[lo:hi], self.vals[lo:hi], backend="numpy")

    def update(self, k: int) -> None:
        """Replace factor ``k`` by its least-squares update (the others fixed)."""
        from scipy.sparse.linalg import LinearOperator, lsqr

        spec = self.chain[k]
        nb, r, s, t = spec.value_shape
        W = self.target
        Q = W.shape[1]
        dt = W.dtype
        Lop = self._op(k + 1, self.N)
        Rop = self._op(0, k)
        Rd = np.eye(spec.q, dtype=dt) if Rop is None else Rop.to_dense()
        if self.weight is not None:
            Rd = Rd @ self.weight
        Rd = Rd.reshape(nb, s, t, Q)
        RdH = _conj(Rd)

        def scatter_apply(x):  # S(x) @ Rd -> (p_k, Q)
            X = x.reshape(nb, r, s, t)
            Y = np.einsum("bijt,bjtc->bitc", X, Rd)
            Y = Y.reshape(spec.p, Q)
            return Y if Lop is None else Lop.matmat(Y)

        def gather_adjoint(y):  # support entries of L^H Y Rd^H
            Y = y.reshape(W.shape)
            Z = Y if Lop is None else Lop.H.matmat(Y)
            Z = Z.reshape(nb, r, t, Q)
            return np.einsum("bitc,bjtc->bijt", Z, RdH).reshape(-1)

        A = LinearOperator((W.size, spec.nnz), dtype=dt,
                           matvec=lambda x: scatter_apply(x).reshape(-1),
                           rmatvec=gather_adjoint)
        x0 = self.vals[k].reshape(-1)
        resid = (W - scatter_apply(x0)).reshape(-1)
        delta = lsqr(A, resid, atol=self.rtol, btol=self.rtol, iter_lim=self.iter_lim)[0]
        self.vals[k] = (x0 + delta.astype(dt, copy=False)).reshape(nb, r, s, t)

    def residual2(self) -> float:
        """The squared objective ``||(W - D) L||_F^2`` (``L = I`` without weight)."""
        E = self._op(0, self.N).to_dense() - self.W
        return sqnorm(E if self.weight is None else E @ self.weight)

    def sweep_up(self) -> float:
        """Update factors input side first; returns the new squared objective."""
        for k in range(self.N):
            self.update(k)
        return self.residual2()

    def sweep_down(self) -> float:
        """Update factors output side first; returns the new squared objective.

        Returns
        -------
        float
            ``||(W - D) L||_F^2`` of the updated values (``L = I`` without weight).
        """
        for k in range(self.N - 1, -1, -1):
            self.update(k)
        return self.residual2()
