"""The public :func:`factorize` and its :class:`FitInfo` result."""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, overload

import numpy as np

from .._validation import (as_generator, check_bool, check_choice, check_int, check_matrix,
                           check_real)
from ..chain import Chain, as_chain, design_chain
from ..operator import DeBut
from ._layout import (Structure, analyse_chain, core_product, core_tensor, core_to_dense,
                      core_to_full, fitted_factors, full_to_core, not_chainable_message,
                      split_ranks, sqnorm, user_factors)
from .als import ALSState, GeneralALSState, WeightedALSState
from .hierarchical import hierarchical_balanced, hierarchical_core, hierarchical_ranked
from ..chain import candidate_chains
from .search import search_chain

__all__ = ["factorize", "FitInfo", "lowrank_error", "METHODS", "ORDERS"]

#: The fitting methods of :func:`factorize`.
METHODS = ("hierarchical", "als", "auto")
#: The split orders of the hierarchical stage.
ORDERS = ("l2r", "balanced")
_DEFAULT_MAX_SWEEPS = {"als": 200, "auto": 100}


@dataclass
class FitInfo:
    """What :func:`factorize` did and how well it fits.

    Attributes
    ----------
    rel_error : float
        ``||W - op.to_dense()||_F / ||W||_F``, computed from the returned operator (0 for
        a zero ``W``).
    method : str
        ``"hierarchical"``, ``"als"`` or ``"auto"``.
    chain : Chain
        The chain that was fitted (the designed one for ``chain="auto"``).
    seconds : float
        Wall time of the whole call (validation, fit and the final error).
    history : list of float
        Relative error of the fitted objective after each stage: for ``"hierarchical"``
        one entry; for ``"als"`` one per sweep; for ``"auto"`` the hierarchical error
        followed by one per sweep.  With padding the objective is the zero-padded
        matrix, so ``history`` may be slightly above ``rel_error``.
    sweeps : int
        ALS sweeps run (one sweep updates every factor once, alternating the direction;
        the DeBut paper calls this a half-sweep).
    stop_reason : str
        ``"hierarchical"`` (no iterations), ``"exact"``, ``"tol"``, ``"max_sweeps"`` or
        ``"callback"``.
    split_errors : tuple of float
        Relative error of each split of the hierarchical stage, in the order the splits
        were made; with ``order="l2r"`` the squares add up to the squared hierarchical
        error.
    n_params : int
        Number of stored values (``chain.nnz``).
    shape : (int, int)
        Shape of ``W`` (the operator's shape).
    svd_rel_error : float or None
        Relative error of the truncated SVD that stores at most as many values
        (``svd_rank * (m + n) <= n_params``), for comparison.  It costs one eigen
        decomposition of ``W``'s smaller Gram matrix, paid only when ``factorize`` is
        asked for its info (``return_info=True``).
    svd_rank : int
        The rank of that truncated SVD.
    data_rel_error : float or None
        With calibration inputs ``X``: ``||X W^T - X D^T||_F / ||X W^T||_F``, the error
        that was minimised.  None without ``X``.
    svd_data_rel_error : float or None
        With ``X``: the same error for the best rank-``svd_rank`` matrix in that norm
        (the truncated SVD of ``W L``, ``L L^H = X^T conj(X)``).
    whitening : str
        With ``X``: ``"exact"`` when ``X^T X`` is diagonal (every stage, hierarchical
        included, then fits the data objective exactly), ``"approximate"`` otherwise
        (the hierarchical start comes from a whitened target; ALS minimises the data
        objective itself).  ``"none"`` without ``X``.
    target : float or None
        The ``rel_error`` asked for (``chain="auto"`` searches).
    target_met : bool or None
        Whether the fit reaches ``target`` (in the fitted objective).
    missed_by : float
        How far above the target the fit ended (0 when met or without a target).
    searched : tuple of (Chain, float)
        The chains a budget or target search estimated, with the hierarchical error it
        measured for each; empty without a search.

    Notes
    -----
    ``rel_error`` is computed from the returned factors (the dense product by the path
    formula, or the operator's dense form), never extrapolated from the iteration; for
    the hierarchical stage ``sum(e**2 for e in split_errors) == history[0]**2`` up to
    rounding, because the split errors are orthogonal.

    Examples
    --------
    >>> import numpy as np
    >>> import debutla as db
    >>> W = np.random.default_rng(0).standard_normal((16, 72))
    >>> chain = "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72"
    >>> op, info = db.factorize(W, chain, method="auto", return_info=True)
    >>> info.method, info.n_params, info.shape
    ('auto', 512, (16, 72))
    >>> bool(info.rel_error <= info.history[0])
    True
    """

    rel_error: float
    method: str
    chain: Chain
    seconds: float
    history: list[float] = field(default_factory=list)
    sweeps: int = 0
    stop_reason: str = "hierarchical"
    split_errors: tuple[float, ...] = ()
    n_params: int = 0
    shape: tuple[int, int] = (0, 0)
    svd_rel_error: float | None = None
    svd_rank: int = 0
    data_rel_error: float | None = None
    svd_data_rel_error: float | None = None
    whitening: str = "none"
    target: float | None = None
    target_met: bool | None = None
    missed_by: float = 0.0
    searched: tuple[tuple[Chain, float], ...] = ()

    def __str__(self) -> str:
        extra = "" if self.svd_rel_error is None else f", svd_rel_error={self.svd_rel_error:.6g}"
        if self.data_rel_error is not None:
            extra += f", data_rel_error={self.data_rel_error:.6g}"
        if self.target is not None:
            extra += f", target={self.target:.6g}, target_met={self.target_met}"
        return (f"FitInfo(method={self.method!r}, rel_error={self.rel_error:.6g}, "
                f"sweeps={self.sweeps}, stop_reason={self.stop_reason!r}, "
                f"seconds={self.seconds:.4g}, n_params={self.n_params}{extra})")


# ---------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------

def _suggest(m: int, n: int) -> str:
    try:
        return f"; for example design_chain({m}, {n}) gives '{design_chain(m, n)}'"
    except ValueError:  # pragma: no cover - defensive
        return ""


def _check_fits(chain: Chain, m: int, n: int) -> Chain:
    P, Q = chain.shape
    if P < m or Q < n:
        raise ValueError(
            f"factorize(chain): the chain's size ({P}, {Q}) cannot serve W of shape "
            f"({m}, {n}); a chain serves W when its output size is >= {m} and its input "
            f"size is >= {n} (W is then zero-padded){_suggest(m, n)}")
    return chain


def _check_init(init: Any, chain: Chain, dtype: np.dtype) -> list[np.ndarray]:
    if isinstance(init, DeBut):
        if init.chain != chain:
            raise ValueError(f"factorize(init): init's chain {init.chain} differs from the "
                             f"chain being fitted {chain}")
        vals = list(init.factors)
    else:
        try:  # the operator's constructor validates the count and the shapes
            vals = list(DeBut(chain, init).factors)
        except (TypeError, ValueError) as e:
            raise type(e)(f"factorize(init): {e}") from None
    out = []
    for i, v in enumerate(vals):
        if v.dtype.kind == "c" and dtype.kind != "c":
            raise TypeError(f"factorize(init): factor {i} is complex but W is real")
        v = v.astype(dtype)
        if not np.isfinite(v).all():
            raise ValueError(f"factorize(init): factor {i} contains NaN or Inf")
        out.append(v)
    return out


@dataclass(frozen=True)
class _Request:
    """The validated arguments of one :func:`factorize` call."""

    A: np.ndarray
    chain: Chain | None  # None: design one ("auto")
    method: str
    order: str
    max_sweeps: int
    tol: float
    rng: np.random.Generator
    progress: bool
    callback: Callable[[int, float], Any] | None
    init: Any
    return_info: bool
    candidates: list[Chain] | None = None  # a search over these (max_params / rel_error)
    target: float | None = None
    X: np.ndarray | None = None


def _check_X(X: Any, A: np.ndarray) -> np.ndarray:
    Xa = check_matrix(X, "X", where="factorize(X)")
    n = A.shape[1]
    if Xa.shape[1] != n:
        raise ValueError(f"factorize(X): X must have shape (samples, {n}), one column per "
                         f"column of W, got shape {Xa.shape}")
    if Xa.dtype.kind == "c" and A.dtype.kind != "c":
        raise TypeError("factorize(X): X is complex but W is real")
    if not np.any(Xa):
        raise ValueError("factorize(X): X is zero, so every operator fits it equally; "
                         "give calibration inputs with at least one nonzero entry")
    return Xa


def _validate(W, chain, method, order, max_sweeps, tol, seed, progress, callback, init,
              return_info, max_params, rel_error, X) -> _Request:
    """Every argument checked, nothing expensive done (no chain designed yet)."""
    A = check_matrix(W, "W", where="factorize(W)")
    candidates = target = None
    if isinstance(chain, str) and chain.strip().lower() == "auto":
        chain = None
        if rel_error is not None:
            target = check_real(rel_error, "rel_error", where="factorize(rel_error)", min=0)
        if max_params is not None:
            max_params = check_int(max_params, "max_params", where="factorize(max_params)")
    else:
        chain = as_chain(chain, where="factorize(chain)")
        _check_fits(chain, *A.shape)
        for name, v in (("max_params", max_params), ("rel_error", rel_error)):
            if v is not None:
                raise ValueError(f"factorize({name}): {name} chooses the chain, so it "
                                 f"needs chain='auto'; got chain {chain}")
    method = check_choice(method, "method", METHODS, where="factorize(method)")
    order = check_choice(order, "order", ORDERS, where="factorize(order)")
    if max_sweeps is None:
        max_sweeps = _DEFAULT_MAX_SWEEPS.get(method, 0)
    max_sweeps = check_int(max_sweeps, "max_sweeps", where="factorize(max_sweeps)", min=0)
    tol = check_real(tol, "tol", where="factorize(tol)", min=0)
    rng = as_generator(seed, where="factorize(seed)")
    if callback is not None and not callable(callback):
        raise TypeError(f"factorize(callback): callback must be callable, got {callback!r}")
    progress = check_bool(progress, "progress", where="factorize(progress)")
    return_info = check_bool(return_info, "return_info", where="factorize(return_info)")
    if init is not None and not isinstance(init, (DeBut, Sequence, np.ndarray)):
        raise TypeError(f"factorize(init): init must be a DeBut or a sequence of arrays, "
                        f"got {type(init).__name__}")
    Xa = None if X is None else _check_X(X, A)
    if chain is None and (max_params is not None or target is not None):
        # last: the candidates (a few design_chain calls) also check the budget
        candidates = candidate_chains(*A.shape, max_params=max_params,
                                      where="factorize(max_params)")
    return _Request(A, chain, method, order, max_sweeps, tol, rng, progress, callback,
                    init, return_info, candidates, target, Xa)


# ---------------------------------------------------------------------------------------
# the problem: W normalised, padded and laid out for the chain
# ---------------------------------------------------------------------------------------

def _ldexp(a: np.ndarray, k: int) -> np.ndarray:
    """``a * 2**k`` exactly (no overflow of ``2**k`` itself; complex arrays too)."""
    a = np.ascontiguousarray(a)
    if np.iscomplexobj(a):
        return np.ldexp(a.view(a.real.dtype), k).view(a.dtype)
    return np.ldexp(a, k)


def _max_exponent(A: np.ndarray) -> int:
    """``e`` with ``max |entries| = f 2**e``, ``f`` in ``[0.5, 1)``; 0 for a zero matrix."""
    peak = float(np.max(np.abs(A.real)))
    if np.iscomplexobj(A):
        peak = max(peak, float(np.max(np.abs(A.imag))))
    return int(math.frexp(peak)[1]) if peak > 0 else 0


def _split_exponent(e: int, n: int) -> list[int]:
    """``n`` integers adding up to ``e``, as equal as possible."""
    q, r = divmod(e, n)
    return [q + (1 if k < r else 0) for k in range(n)]


@dataclass
class _Weights:
    """Calibration inputs as a weight: ``L L^H = X^T conj(X)`` (normalised scale).

    ``cols`` is set (the column norms ``l`` of ``X``) when ``X^T conj(X)`` is diagonal, so that
    whitening is a column scaling, exact for every chain; ``L`` is the symmetric square
    root otherwise.
    """

    cols: np.ndarray | None
    L: np.ndarray | None

    @property
    def exact(self) -> bool:
        return self.cols is not None

    def apply(self, A: np.ndarray) -> np.ndarray:
        """``A L`` (the whitened matrix)."""
        return A * self.cols if self.cols is not None else A @ self.L


def _weights(X: np.ndarray, dtype: np.dtype) -> _Weights:
    """The weight of the data objective; memory ``O(n^2)`` whatever the sample count."""
    Xn = _ldexp(X, -_max_exponent(X)).astype(dtype, copy=False)
    C = Xn.T @ Xn.conj()
    d = np.real(np.diagonal(C)).copy()
    if np.count_nonzero(C - np.diag(np.diagonal(C))) == 0:
        cols = np.sqrt(d)
        # inputs that are never excited: the smallest weight of the others (not zero, so
        # that the column scaling can be undone)
        cols[cols == 0] = cols[cols > 0].min()
        return _Weights(cols.astype(dtype.type(0).real.dtype), None)
    lam, V = np.linalg.eigh(C)
    L = (V * np.sqrt(np.clip(lam, 0, None))) @ V.conj().T
    return _Weights(None, L.astype(dtype, copy=False))


def _spectrum(M: np.ndarray) -> np.ndarray:
    """Squared singular values of ``M`` (descending), from its smaller Gram matrix."""
    B = M.astype(np.complex128 if M.dtype.kind == "c" else np.float64)
    G = B @ B.conj().T if B.shape[0] <= B.shape[1] else B.conj().T @ B
    return np.clip(np.linalg.eigvalsh(G)[::-1], 0, None)


def _tail(lam: np.ndarray, k: int) -> float:
    """``sqrt(sum_{i >= k} lam_i / sum lam)``: the relative error of rank ``k``."""
    tot = float(np.sum(lam))
    return math.sqrt(float(np.sum(lam[k:])) / tot) if tot > 0 else 0.0


@dataclass
class _Problem:
    """The matrix a fit works on, normalised, padded and laid out for the chain.

    ``A`` (``max |A|`` in ``[0.5, 1)``) is ``2**-exp`` times the *target*: ``W`` itself,
    or ``W diag(l)`` with exact whitening.  ``base`` is ``W`` normalised (for the plain
    error), ``exp0`` its exponent (``W = 2**exp0 base``).  With ``weight`` the objective
    is ``||(A - D) weight||`` (matrix-free ALS); ``norm2`` normalises the objective.
    """

    chain: Chain
    st: Structure | None
    A: np.ndarray
    exp: int
    Wf: np.ndarray           # normalised, zero-padded, fitted orientation
    T: np.ndarray | None     # core batch (chainable chains)
    off2: float              # squared norm of Wf outside the support
    norm2: float             # squared norm of the objective's target
    base: np.ndarray
    exp0: int
    colscale: np.ndarray | None = None   # exact whitening: the l of the target W diag(l)
    weight: np.ndarray | None = None     # approximate whitening: Q x Q weight

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

    @property
    def splittable(self) -> bool:
        """Whether the hierarchical method applies (the chain or its transpose chainable)."""
        return self.st is not None or _ranks(self.chain) is not None

    def to_user(self, vals: list[np.ndarray]) -> list[np.ndarray]:
        """Fitted values (core layout when chainable) to the user's canonical factors."""
        if self.st is None:
            return vals
        return user_factors(core_to_full(vals, self.st), self.st)

    def to_fitted(self, user: list[np.ndarray]) -> list[np.ndarray]:
        """Inverse of :meth:`to_user`."""
        if self.st is None:
            return user
        return full_to_core(fitted_factors(user, self.st), self.st)

    def dense(self, vals: list[np.ndarray]) -> np.ndarray:
        """The ``m x n`` product of fitted values (normalised scale)."""
        m, n = self.shape
        if self.st is None:
            D = DeBut(self.chain, vals, backend="numpy").to_dense()
        else:
            D = core_to_dense(core_product(vals), self.st)
            D = D.T if self.st.transposed else D
        return D[:m, :n]

    def core(self) -> np.ndarray:
        """The core batch ``T``, laid out for chainable chains (``st`` set) only."""
        if self.T is None:
            raise RuntimeError("internal: the chain has no core layout (st is None)")
        return self.T

    def state(self, vals: list[np.ndarray]):
        """The ALS engine for this problem, started at ``vals``."""
        if self.st is None:
            return GeneralALSState(self.Wf, self.chain, vals, weight=self.weight)
        if self.weight is not None:  # dense chain, one core problem: closed form
            return WeightedALSState(self.core(), self.st.rs, vals,
                                    self.weight @ self.weight.conj().T)
        return ALSState(self.core(), self.st.rs, vals)


def _prepare(target: np.ndarray, chain: Chain, base: np.ndarray, exp0: int, *,
             colscale: np.ndarray | None = None, weight: np.ndarray | None = None,
             chainable: bool = True) -> _Problem:
    """Normalise ``target`` and lay it out for ``chain`` (the fitted orientation)."""
    exp = _max_exponent(target)
    An = _ldexp(target, -exp)
    m, n = target.shape
    P, Q = chain.shape
    Wp = An
    if (P, Q) != (m, n):
        Wp = np.zeros((P, Q), dtype=An.dtype)
        Wp[:m, :n] = An
    st = analyse_chain(chain) if chainable else None
    Wq = None
    if weight is not None:  # inputs padded with zeros carry no weight
        Wq = np.zeros((Q, Q), dtype=weight.dtype)
        Wq[:n, :n] = weight
        if st is not None and (st.G > 1 or st.transposed):  # no closed form: matrix-free
            st = None
    norm2 = sqnorm(An if weight is None else An @ weight)
    if st is None:
        return _Problem(chain, None, An, exp, Wp, None, 0.0, norm2, base, exp0, colscale, Wq)
    Wf = Wp.T if st.transposed else Wp
    T, off2 = core_tensor(Wf, st)
    return _Problem(chain, st, An, exp, Wf, T, off2, norm2, base, exp0, colscale, Wq)


# ---------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------

class _Progress:
    """tqdm bar when tqdm is installed, else a plain stderr line; no-op when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.enabled = enabled
        self.bar = None
        self.n = 0
        self.total = total
        self.desc = desc
        self.err: float | None = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except Exception:  # pragma: no cover - tqdm optional
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True)

    def update(self, err: float) -> None:
        if not self.enabled:
            return
        self.n += 1
        self.err = err
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(rel_error=f"{err:.4g}", refresh=False)
        else:
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} rel_error={err:.4g}")
            sys.stderr.flush()

    def close(self, stop: str = "") -> None:
        """End the bar at the step where the fit really stopped (``tol``, time, exact),
        not at ``max_sweeps``, with the final error and the reason.
        """
        if not self.enabled:
            return
        err = self.err
        if self.bar is not None:
            self.bar.total = self.n  # an early stop is the end: 100%, no stale ETA
            post = {} if err is None else {"rel_error": f"{err:.4g}"}
            if stop:
                post["stop"] = stop
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
            self.bar.close()
        else:
            tail = f" (stopped: {stop})" if stop else ""
            sys.stderr.write(f"\r{self.desc}: {self.n} steps{tail}\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# start -> refine -> assemble
# ---------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What the stages produce: fitted values and the record of how they were reached."""

    vals: list[np.ndarray]
    history: list[float] = field(default_factory=list)
    splits: tuple[float, ...] = ()
    sweeps: int = 0
    stop: str = "hierarchical"
    stopped: bool = False  # the callback asked to stop


def _report(req: _Request, bar: _Progress, run: _Run, sweep: int, err: float) -> None:
    run.history.append(err)
    bar.update(err)
    if req.callback is not None and req.callback(sweep, err) is False:
        run.stopped = True
        run.stop = "callback"


@functools.lru_cache(maxsize=64)
def _ranks(chain: Chain) -> tuple[bool, tuple[int, ...]] | None:
    """``(transposed, split ranks)`` of a chainable chain (either orientation), else None."""
    for transposed, c in ((False, chain), (True, chain.transpose())):
        ranks = split_ranks(c)
        if ranks is not None:
            return transposed, ranks
    return None


def _hierarchical(prob: _Problem, order: str):
    """Hierarchical values (the problem's layout), squared split errors, squared total.

    Chains with splits of rank > 1 (no path structure, ``prob.st is None``) go through
    :func:`~.hierarchical.hierarchical_ranked` in the left-to-right order whatever
    ``order`` says.
    """
    if prob.st is None:
        ranked = _ranks(prob.chain)
        if ranked is None:
            raise RuntimeError("internal: hierarchical fit of a chain without split ranks")
        transposed, ranks = ranked
        if not transposed:
            vals, step2 = hierarchical_ranked(prob.Wf, prob.chain, ranks)
        else:
            vt, step2 = hierarchical_ranked(np.ascontiguousarray(prob.Wf.T),
                                            prob.chain.transpose(), ranks)
            vals = [np.ascontiguousarray(v.transpose(0, 2, 1, 3)) for v in reversed(vt)]
        return vals, step2, sum(step2)
    T = prob.core()
    if order == "balanced":
        vals, step2 = hierarchical_balanced(T, prob.st)
        # the split errors are not orthogonal: measure
        return vals, step2, sqnorm(core_product(vals) - T) + prob.off2
    vals, step2 = hierarchical_core(T, prob.st.rs)
    return vals, step2, sum(step2) + prob.off2


def _scaled(vals: list[np.ndarray], exp: int, sign: int = 1) -> list[np.ndarray]:
    """Factor values whose product is ``2**(sign * exp)`` times the product of ``vals``.

    The split of ``exp`` over the factors does not depend on ``sign``, so scaling down
    and back up returns the same values.
    """
    return [_ldexp(v, sign * e) for v, e in zip(vals, _split_exponent(exp, len(vals)))]


def _columns(scale: np.ndarray, spec) -> np.ndarray:
    """``scale`` (one entry per input, padded with ones) in a first factor's value layout."""
    nb, _, s, t = spec.value_shape
    lp = np.ones(spec.q, dtype=scale.dtype)
    lp[:scale.size] = scale
    return lp.reshape(nb, 1, s, t)


def _start(prob: _Problem, req: _Request, init: list[np.ndarray] | None,
           bar: _Progress, cache: dict) -> _Run:
    """The starting values: hierarchical, the given ``init`` or a seeded random start.

    ``cache`` maps chains to hierarchical results a search already computed for the
    same target, so the winner of a search is not fitted twice.
    """
    if init is not None:
        if prob.colscale is not None:  # init fits W; the target is W diag(l)
            init = [init[0] * _columns(prob.colscale, prob.chain[0])] + init[1:]
        return _Run(prob.to_fitted(_scaled(init, prob.exp0 + prob.exp, -1)))
    if not prob.splittable or req.method == "als":
        return _Run(prob.to_fitted([np.array(v) for v in
                                    DeBut.random(prob.chain, seed=req.rng,
                                                 dtype=prob.A.dtype).factors]))
    vals, step2, err2 = cache.get(prob.chain) or _hierarchical(prob, req.order)
    run = _Run(vals, splits=tuple(math.sqrt(e / prob.norm2) for e in step2))
    _report(req, bar, run, 0, math.sqrt(err2 / prob.norm2))
    return run


def _start_weighted(prob: _Problem, req: _Request, w: _Weights, bar: _Progress) -> _Run:
    """Approximate whitening: the better of two hierarchical starts in the data objective.

    The hierarchical fits of ``W`` and of the whitened ``W L`` give the output-side
    factors; the input-side factor is then the least-squares one in the data objective.
    The plain start keeps exactness on DeBut products; the whitened one follows the data.
    """
    best: tuple[float, list[np.ndarray]] | None = None
    for target in (prob.base, w.apply(prob.base)):
        sub = _prepare(target, prob.chain, prob.base, prob.exp0)
        vals, _, _ = _hierarchical(sub, req.order)
        state = prob.state(prob.to_fitted(_scaled(sub.to_user(vals), sub.exp)))
        state.update(0)
        err = math.sqrt(state.residual2() / prob.norm2)
        if best is None or err < best[0]:
            best = (err, state.vals)
    if best is None:
        raise RuntimeError("internal: no weighted start was fitted")
    run = _Run(best[1])
    _report(req, bar, run, 0, best[0])
    return run


def _refine(prob: _Problem, req: _Request, run: _Run, bar: _Progress) -> _Run:
    """ALS sweeps from ``run.vals`` while they help; keeps the best values met."""
    if req.method == "hierarchical" or run.stopped:
        return run
    eps_stop = 8 * np.finfo(prob.A.dtype).eps
    best = run.history[-1] if run.history else math.inf
    if best <= eps_stop:
        run.stop = "exact"
        return run
    state = prob.state(run.vals)
    prev = best
    run.stop = "max_sweeps"
    for sweep in range(1, req.max_sweeps + 1):
        e2 = state.sweep_up() if sweep % 2 == 1 else state.sweep_down()
        err = math.sqrt((e2 + prob.off2) / prob.norm2)
        run.sweeps = sweep
        if err < best:
            best = err
            run.vals = [v.copy() for v in state.vals]
        _report(req, bar, run, sweep, err)
        if run.stopped:
            break
        if err <= eps_stop:
            run.stop = "exact"
            break
        if math.isfinite(prev) and prev - err <= req.tol * prev:
            run.stop = "tol"
            break
        prev = err
    return run


def _problem(req: _Request, base: np.ndarray, exp0: int, w: _Weights | None,
             chain: Chain) -> _Problem:
    if w is None:
        return _prepare(base, chain, base, exp0)
    if w.exact:
        return _prepare(w.apply(base), chain, base, exp0, colscale=w.cols)
    return _prepare(base, chain, base, exp0, weight=w.L)


def _fit(req: _Request, prob: _Problem, w: _Weights | None,
         init: list[np.ndarray] | None, cache: dict) -> _Run:
    """Start, then refine: the fitted values (the problem's layout) and their record."""
    if prob.norm2 == 0:
        zero = [np.zeros(spec.value_shape, dtype=prob.A.dtype) for spec in prob.chain]
        return _Run(prob.to_fitted(zero), [0.0], stop="exact")
    hier = req.method != "als" and init is None and prob.splittable
    weighted_start = hier and w is not None and not w.exact
    total = (req.max_sweeps if req.method != "hierarchical" else 0) + int(hier)
    bar = _Progress(req.progress, total, f"factorize[{req.method}]")
    stop = ""
    try:
        if weighted_start and w is not None:  # weighted_start implies w
            run = _start_weighted(prob, req, w, bar)
        else:
            run = _start(prob, req, init, bar, cache)
        run = _refine(prob, req, run, bar)
        stop = run.stop
        return run
    finally:
        bar.close(stop)


def _estimate(base: np.ndarray, exp0: int, w: _Weights | None, order: str,
              cache: dict, chain: Chain) -> float:
    """The hierarchical error of ``chain`` (of the whitened target with ``X``).

    The fitted values are kept in ``cache`` when they can start the final fit (no ``X``
    or exact whitening): they are only ``nnz`` values per chain.
    """
    prob = _prepare(base if w is None else w.apply(base), chain, base, exp0)
    if prob.norm2 == 0:
        return 0.0
    res = _hierarchical(prob, order)
    if w is None or w.exact:
        cache[chain] = res
    return math.sqrt(res[2] / prob.norm2)


def _fit_info(prob: _Problem, req: _Request, run: _Run, t0: float, *, rel: float,
              data: float | None, w: _Weights | None,
              searched: tuple[tuple[Chain, float], ...]) -> FitInfo:
    """The one place a :class:`FitInfo` is built (with the SVD comparison)."""
    m, n = prob.shape
    k = min(prob.chain.nnz // (m + n), min(m, n))
    svd = _tail(_spectrum(prob.base), k)
    svd_data = None if w is None else _tail(_spectrum(w.apply(prob.base)), k)
    achieved = rel if data is None else data
    met = None if req.target is None else achieved <= req.target
    missed = 0.0 if not (req.target is not None and not met) else achieved - req.target
    whitening = "none" if w is None else ("exact" if w.exact else "approximate")
    return FitInfo(rel_error=rel, method=req.method, chain=prob.chain,
                   seconds=time.perf_counter() - t0, history=list(run.history),
                   sweeps=run.sweeps, stop_reason=run.stop, split_errors=run.splits,
                   n_params=prob.chain.nnz, shape=prob.shape, svd_rel_error=svd,
                   svd_rank=k, data_rel_error=data, svd_data_rel_error=svd_data,
                   whitening=whitening, target=req.target, target_met=met,
                   missed_by=missed, searched=searched)


def _rel(D: np.ndarray, A: np.ndarray, norm2: float) -> float:
    return math.sqrt(sqnorm(D - A) / norm2) if norm2 > 0 else 0.0


def _assemble(prob: _Problem, req: _Request, run: _Run, t0: float, w: _Weights | None,
              searched: tuple[tuple[Chain, float], ...] = ()):
    """The operator at the user's scale and its errors, measured from the fitted values."""
    user = _scaled(prob.to_user(run.vals), prob.exp0 + prob.exp)
    if prob.colscale is not None:
        user[0] = user[0] / _columns(prob.colscale, prob.chain[0])
    op = DeBut(prob.chain, user, shape=prob.shape, copy=False)  # values we own
    if not req.return_info:  # the errors are only reported, never used
        return op
    D = prob.dense(run.vals)
    data = None
    if prob.weight is not None:  # D fits base itself, weighted
        n = prob.shape[1]
        data = _rel(D @ prob.weight[:n, :n], prob.A @ prob.weight[:n, :n], prob.norm2)
    elif prob.colscale is not None:  # D fits base diag(l)
        data = _rel(D, prob.A, prob.norm2)
        D = _ldexp(D, prob.exp) / prob.colscale
    rel = _rel(D, prob.base, sqnorm(prob.base))
    return op, _fit_info(prob, req, run, t0, rel=rel, data=data, w=w, searched=searched)


# ---------------------------------------------------------------------------------------
# factorize
# ---------------------------------------------------------------------------------------

@overload
def factorize(
    W: Any,
    chain: Chain | str = "auto",
    method: str = "auto",
    *,
    return_info: Literal[False] = False,
    max_sweeps: int | None = None,
    tol: float = 1e-5,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    init: DeBut | Sequence[Any] | None = None,
    order: str = "l2r",
    max_params: int | None = None,
    rel_error: float | None = None,
    X: Any = None,
) -> DeBut: ...


@overload
def factorize(
    W: Any,
    chain: Chain | str = "auto",
    method: str = "auto",
    *,
    return_info: Literal[True],
    max_sweeps: int | None = None,
    tol: float = 1e-5,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    init: DeBut | Sequence[Any] | None = None,
    order: str = "l2r",
    max_params: int | None = None,
    rel_error: float | None = None,
    X: Any = None,
) -> tuple[DeBut, FitInfo]: ...


@overload
def factorize(
    W: Any,
    chain: Chain | str = "auto",
    method: str = "auto",
    *,
    return_info: bool = False,
    max_sweeps: int | None = None,
    tol: float = 1e-5,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    init: DeBut | Sequence[Any] | None = None,
    order: str = "l2r",
    max_params: int | None = None,
    rel_error: float | None = None,
    X: Any = None,
) -> DeBut | tuple[DeBut, FitInfo]: ...


def factorize(
    W: Any,
    chain: Chain | str = "auto",
    method: str = "auto",
    *,
    return_info: bool = False,
    max_sweeps: int | None = None,
    tol: float = 1e-5,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, float], Any] | None = None,
    init: DeBut | Sequence[Any] | None = None,
    order: str = "l2r",
    max_params: int | None = None,
    rel_error: float | None = None,
    X: Any = None,
) -> DeBut | tuple[DeBut, FitInfo]:
    """Fit a dense matrix with a DeBut product: the best operator for a chain.

    Parameters
    ----------
    W : array_like
        The ``m x n`` matrix to approximate: float32, float64, complex64 or complex128 (integers
        become float64, float16 float32).  NaN and Inf are refused.
    chain : Chain or str
        The factor shapes: a :class:`~debutla.Chain`, a string in the paper's notation
        (``"16 <-(4,4,4)- 16 <-(4,32,1)- 128"``), or ``"auto"`` (:func:`~debutla.design_chain` for
        ``W``'s shape).  Its size ``(M, N)`` must be at least ``(m, n)``; a larger chain
        fits the zero-padded ``M x N`` matrix and the operator keeps ``W``'s shape.
        With ``"auto"`` and ``max_params`` or ``rel_error`` the chain is searched for
        (Notes).
    method : {"auto", "hierarchical", "als"}
        ``"hierarchical"``: rank-one block splits, one factor at a time (fast, exact on
        DeBut products, optimal for two factors).  ``"als"``: alternating least squares
        from a random start (the DeBut paper's method, each update exact).  ``"auto"``
        (default): hierarchical, then ALS sweeps from that start while they lower the
        error by more than ``tol``.
    return_info : bool
        Also return a :class:`FitInfo`.
    max_sweeps : int, optional
        Most ALS sweeps (each updates every factor once; directions alternate).
        Defaults: 200 for ``"als"``, 100 for ``"auto"``; 0 is allowed.
    tol : float
        Stop ALS when a sweep lowers the relative error by less than ``tol`` times its
        value (default ``1e-5``).
    seed : int or numpy.random.Generator, optional
        Seeds the random ALS start (``"als"`` without ``init``).  Same input and seed give
        the same result.
    progress : bool
        Show a progress bar (tqdm if installed, else a line on stderr).
    callback : callable, optional
        ``callback(sweep, rel_error)`` after the hierarchical stage (sweep 0) and after
        each ALS sweep; returning ``False`` stops the fit (the best operator met so far
        is returned).
    init : DeBut or sequence of arrays, optional
        Starting factors for ALS (``"als"`` and ``"auto"``; with ``"auto"`` it replaces
        the hierarchical start).
    order : {"l2r", "balanced"}
        Split order of the hierarchical stage: ``"l2r"`` (default) peels one factor at a
        time from the output side and carries the guarantees below; ``"balanced"`` splits
        each range of factors at its middle (a balanced tree), with the frames normalised
        before each split; it is exact on DeBut products but its split errors are not
        orthogonal, and no error bound is claimed for it here.
    max_params : int, optional
        With ``chain="auto"``: the most accurate chain with at most this many values
        (by the hierarchical error of each candidate), then fitted with ``method``.
    rel_error : float, optional
        With ``chain="auto"``: the smallest chain whose hierarchical error reaches this
        relative error (the data error with ``X``); when none does, the most accurate
        one, and ``info.target_met`` is False with ``info.missed_by`` the shortfall.
        With ``max_params`` too, only chains within the budget are searched.
    X : array_like, optional
        Calibration inputs, shape ``(samples, n)`` (the layer's inputs, one per row):
        the fit then minimises ``||X W^T - X D^T||_F`` instead of ``||W - D||_F``.
        Only ``X^T conj(X)`` (``n x n``) is kept, whatever the number of samples.

    Returns
    -------
    op : DeBut
        The fitted operator, ``op.shape == W.shape``, ``op.dtype`` = ``W``'s dtype.
    info : FitInfo
        Only when ``return_info``.

    Raises
    ------
    TypeError
        If ``W`` is not a numeric NumPy array, ``chain`` has the wrong type, or an
        option has the wrong type.
    ValueError
        If ``W`` is not 2-D, empty or has NaN/Inf; if the chain cannot serve ``W``'s
        shape (the message names the sizes that would); if ``method`` is unknown; if the
        chain is not chainable (see Notes); if ``max_params`` is smaller than every
        candidate chain, ``rel_error`` is negative or NaN, either is given with an
        explicit chain, or ``X`` has the wrong number of columns, NaN/Inf or is zero.
        All of this is checked before any chain is designed or fitted.

    Notes
    -----
    **Paths.**  In a chain with ``t_{k+1} = r_k t_k`` for every factor (every dense
    chain) each entry of the product is the product of exactly one value per factor:
    with row digits ``(i_N, ..., i_1)`` and column digits ``(j_N, ..., j_1)`` (mixed
    radix ``r_k`` and ``s_k``, ``i_1`` fastest),
    ``W[i, j] = prod_k V_k[j_{>k}, i_k, j_k, i_{<k}]`` in the canonical ``(nb, r, s, t)``
    layout.  The chains served are these *chainable* chains, with rank one between
    consecutive factors, and their transposes (fitted through ``W.T``); a chain whose
    first factor has ``t_1 > 1`` or whose last has ``nb_N > 1`` gives a product with
    forced zeros, whose other entries are fitted.

    **Hierarchical.**  Splitting off the output-side factor ``R_N`` leaves, for every
    ``(j_N, i_{<N})``, an ``r_N x (n / s_N)`` block that must be rank one.  All blocks get
    their best rank-one approximation at once (top eigenvector of the smaller Gram matrix,
    batched); the unit vectors become ``R_N``'s values and ``sigma v`` is carried on as
    the matrix the remaining chain must fit.  Because ``R_N`` then has orthonormal
    structure, each later split error is not amplified and is orthogonal to the earlier
    ones: ``||W - D||^2 = sum of split errors^2``.  Each split error is at most the best
    error for the whole chain, so the result is within ``sqrt(N - 1)`` of optimal
    (Le, Zheng, Riccietti, Gribonval, 2025), exact when ``W`` is a DeBut product, and
    optimal for two factors (the closed-form Monarch projection).  Cost ``O(r m n)``.

    **ALS.**  With all factors but one fixed, each value of the free factor touches a
    disjoint set of entries, so its exact least-squares update is a closed-form ratio
    computed for all values in ``O(m n)``; the error never increases.  A value whose
    paths all carry zero weight keeps its previous value.

    **Padding.**  With a chain larger than ``W`` the zero-padded matrix is fitted: the
    padding is asked to be zero too, which costs accuracy but keeps the problem
    structured.  ``rel_error`` is measured on ``W`` itself.

    **Scale.**  ``W`` is divided by the power of two nearest its largest entry before
    the fit (exact, no rounding) and the factors are multiplied back, the power split
    evenly over them; so the fit and ``rel_error`` do not depend on ``W``'s scale
    anywhere in the floating range.

    **Budget and target search.**  The candidates (:func:`~debutla.fit.search.candidate_chains`)
    are the minimum-parameter monotonic designs of 2-8 factors (radices up to 16, 4 and
    2, padding allowed), every two-factor dense chain smaller than ``W`` and ``W``
    itself.  For a budget the two largest candidates of each factor count are fitted
    hierarchically and the lowest error wins; for a target a bisection over the
    candidates sorted by size finds a small one that reaches it.  Only the winner is
    refined with ALS (``method``).  ``info.searched`` lists what was estimated.

    **Data-aware fits.**  With ``C = X^T conj(X) = L L^H`` the objective is
    ``||(W - D) L||_F``.  When ``C`` is diagonal (``L = diag(l)``) this is exactly the
    plain problem for ``W diag(l)`` with the first factor's columns divided by ``l``,
    so every method and guarantee carries over (``info.whitening == "exact"``).
    Otherwise (``"approximate"``) the start is the better of the hierarchical fits of
    ``W`` and of ``W L`` followed by the least-squares input factor, and ALS minimises
    the data objective itself with matrix-free weighted updates (never increasing it).

    **Stages.**  Arguments are all checked first (before any chain is designed), then
    the fit starts (hierarchical, ``init`` or random), ALS refines it, and the operator
    is assembled with its error measured from the returned values.

    Examples
    --------
    >>> import numpy as np
    >>> import debutla as db
    >>> chain = db.Chain.parse("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72")
    >>> W = db.DeBut.random(chain, seed=0).to_dense()
    >>> op, info = db.factorize(W, chain, method="hierarchical", return_info=True)
    >>> bool(info.rel_error < 1e-12)
    True
    >>> op.shape
    (16, 72)
    """
    t0 = time.perf_counter()
    req = _validate(W, chain, method, order, max_sweeps, tol, seed, progress, callback,
                    init, return_info, max_params, rel_error, X)
    m, n = req.A.shape
    exp0 = _max_exponent(req.A)
    base = _ldexp(req.A, -exp0)
    w = None if req.X is None else _weights(req.X, req.A.dtype)
    searched: tuple[tuple[Chain, float], ...] = ()
    cache: dict = {}
    if req.chain is not None:
        fchain = req.chain
    elif req.candidates is None:
        fchain = design_chain(m, n)
    else:
        res = search_chain(req.candidates,
                           lambda c: _estimate(base, exp0, w, req.order, cache, c),
                           rel_error=req.target)
        fchain, searched = res.chain, res.tried
    if req.method == "hierarchical" and analyse_chain(fchain) is None and \
            _ranks(fchain) is None:
        raise ValueError(not_chainable_message(fchain,
                                               "factorize(chain, method='hierarchical'"))
    init_vals = None if req.init is None else _check_init(req.init, fchain, req.A.dtype)
    prob = _problem(req, base, exp0, w, fchain)
    return _assemble(prob, req, _fit(req, prob, w, init_vals, cache), t0, w, searched)


def lowrank_error(W: Any, n_params: int) -> tuple[float, int]:
    """Relative error of the best low-rank approximation with at most ``n_params`` values.

    A rank-``k`` factorization ``U V^H`` of an ``m x n`` matrix stores ``k (m + n)``
    values, so ``k = floor(n_params / (m + n))``.  Use it beside a DeBut fit with the
    same parameter count to see whether a low-rank factorization would serve better.

    Parameters
    ----------
    W : array_like
        The ``m x n`` matrix.
    n_params : int

    Returns
    -------
    (rel_error, rank) : (float, int)

    Notes
    -----
    By Eckart-Young the error is ``sqrt(sum_{i>k} sigma_i^2) / ||W||_F``; the
    ``sigma_i^2`` are computed as the eigenvalues of the smaller Gram matrix.

    Examples
    --------
    >>> import numpy as np
    >>> lowrank_error(np.eye(4), 8)
    (0.8660254037844386, 1)
    """
    A = check_matrix(W, "W", where="lowrank_error(W)")
    k = check_int(n_params, "n_params", where="lowrank_error(n_params)", min=0)
    k = min(k // (A.shape[0] + A.shape[1]), min(A.shape))
    # squared singular values = eigenvalues of the smaller Gram matrix (much cheaper
    # than an SVD; the tail sum is accurate to about eps * ||W||^2); W normalised first
    return _tail(_spectrum(_ldexp(A, -_max_exponent(A))), k), k
