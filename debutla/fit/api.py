"""The public :func:`factorize` and its :class:`FitInfo` result."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .._validation import (as_chain, as_generator, check_bool, check_choice, check_int,
                           check_real, supported_dtype)
from ..chain import Chain, design_chain
from ..operator import DeBut
from ._layout import (Structure, analyse_chain, core_product, core_tensor, core_to_dense,
                      core_to_full, fitted_factors, full_to_core, not_chainable_message,
                      sqnorm, user_factors)
from .als import ALSState, GeneralALSState
from .hierarchical import hierarchical_balanced, hierarchical_core

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

    def __str__(self) -> str:
        return (f"FitInfo(method={self.method!r}, rel_error={self.rel_error:.6g}, "
                f"sweeps={self.sweeps}, stop_reason={self.stop_reason!r}, "
                f"seconds={self.seconds:.4g}, n_params={self.n_params})")


# ---------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------

def _check_W(W: Any, where: str) -> np.ndarray:
    """``W`` as a finite 2-D NumPy array of a supported dtype (integers -> float64)."""
    if hasattr(W, "__cuda_array_interface__") or type(W).__module__.split(".")[0] == "cupy":
        raise TypeError(f"{where}: W must be a NumPy array; CuPy arrays are not "
                        f"supported yet (move it with W.get())")
    if isinstance(W, DeBut):
        raise TypeError(f"{where}: W must be a dense array; use W.to_dense() to refit "
                        f"a DeBut operator")
    try:
        A = np.asarray(W)
    except Exception as e:  # pragma: no cover - exotic array-likes
        raise TypeError(f"{where}: W must be array-like, got {type(W).__name__}") from e
    if A.dtype.kind not in "biufc":
        raise TypeError(f"{where}: W must be numeric (float32, float64, complex64, "
                        f"complex128), got dtype {A.dtype}")
    if A.ndim != 2:
        raise ValueError(f"{where}: W must be a 2-D matrix, got shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"{where}: W must not be empty, got shape {A.shape}")
    A = A.astype(supported_dtype(A.dtype, where=where, promote=True), copy=False)
    if not np.isfinite(A).all():
        bad = int(np.size(A) - np.count_nonzero(np.isfinite(A)))
        raise ValueError(f"{where}: W contains {bad} NaN or Inf entries; all entries "
                         f"must be finite")
    return A


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


def _validate(W, chain, method, order, max_sweeps, tol, seed, progress, callback, init,
              return_info) -> _Request:
    """Every argument checked, nothing expensive done (no chain designed yet)."""
    A = _check_W(W, "factorize(W)")
    if isinstance(chain, str) and chain.strip().lower() == "auto":
        chain = None
    else:
        chain = as_chain(chain, where="factorize(chain)")
        _check_fits(chain, *A.shape)
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
    return _Request(A, chain, method, order, max_sweeps, tol, rng, progress, callback,
                    init, return_info)


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
class _Problem:
    """``W = 2**exp * A`` (``max |A|`` in ``[0.5, 1)``), padded and laid out for the chain."""

    chain: Chain
    st: Structure | None
    A: np.ndarray            # the normalised W, shape (m, n)
    exp: int
    Wf: np.ndarray           # normalised, zero-padded, fitted orientation
    T: np.ndarray | None     # core batch (chainable chains)
    off2: float              # squared norm of Wf outside the support
    norm2: float             # ||A||_F^2

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape  # type: ignore[return-value]

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


def _prepare(A: np.ndarray, chain: Chain) -> _Problem:
    exp = _max_exponent(A)
    An = _ldexp(A, -exp)
    m, n = A.shape
    P, Q = chain.shape
    Wp = An
    if (P, Q) != (m, n):
        Wp = np.zeros((P, Q), dtype=A.dtype)
        Wp[:m, :n] = An
    st = analyse_chain(chain)
    if st is None:
        return _Problem(chain, st, An, exp, Wp, None, 0.0, sqnorm(An))
    Wf = Wp.T if st.transposed else Wp
    T, off2 = core_tensor(Wf, st)
    return _Problem(chain, st, An, exp, Wf, T, off2, sqnorm(An))


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
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except Exception:  # pragma: no cover - tqdm optional
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(self, err: float) -> None:
        if not self.enabled:
            return
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(rel_error=f"{err:.4g}", refresh=False)
        else:
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} rel_error={err:.4g}")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")
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


def _start(prob: _Problem, req: _Request, init: list[np.ndarray] | None,
           bar: _Progress) -> _Run:
    """The starting values: hierarchical, the given ``init`` or a seeded random start."""
    st, dtype = prob.st, prob.A.dtype
    if init is not None:
        exps = _split_exponent(prob.exp, len(init))
        return _Run(prob.to_fitted([_ldexp(v, -e) for v, e in zip(init, exps)]))
    if st is None or req.method == "als":
        return _Run(prob.to_fitted([np.array(v) for v in
                                    DeBut.random(prob.chain, seed=req.rng,
                                                 dtype=dtype).factors]))
    if req.order == "balanced":
        vals, step2 = hierarchical_balanced(prob.T, st)
        # the split errors are not orthogonal: measure
        err2 = sqnorm(core_product(vals) - prob.T)
    else:
        vals, step2 = hierarchical_core(prob.T, st.rs)
        err2 = sum(step2)
    run = _Run(vals, splits=tuple(math.sqrt(e / prob.norm2) for e in step2))
    _report(req, bar, run, 0, math.sqrt((err2 + prob.off2) / prob.norm2))
    if run.stopped:
        run.stop = "callback"
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
    state = (GeneralALSState(prob.Wf, prob.chain, run.vals) if prob.st is None
             else ALSState(prob.T, prob.st.rs, run.vals))
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
            run.stop = "callback"
            break
        if err <= eps_stop:
            run.stop = "exact"
            break
        if math.isfinite(prev) and prev - err <= req.tol * prev:
            run.stop = "tol"
            break
        prev = err
    return run


def _fit_info(prob: _Problem, req: _Request, run: _Run, rel: float,
              t0: float) -> FitInfo:
    """The one place a :class:`FitInfo` is built."""
    return FitInfo(rel_error=rel, method=req.method, chain=prob.chain,
                   seconds=time.perf_counter() - t0, history=list(run.history),
                   sweeps=run.sweeps, stop_reason=run.stop, split_errors=run.splits,
                   n_params=prob.chain.nnz, shape=prob.shape)


def _assemble(prob: _Problem, req: _Request, run: _Run, t0: float):
    """The operator at the user's scale and its error, measured from the fitted values."""
    rel = (math.sqrt(sqnorm(prob.dense(run.vals) - prob.A) / prob.norm2)
           if prob.norm2 > 0 else 0.0)
    user = prob.to_user(run.vals)
    exps = _split_exponent(prob.exp, len(user))
    op = DeBut(prob.chain, [_ldexp(v, e) for v, e in zip(user, exps)], shape=prob.shape)
    return (op, _fit_info(prob, req, run, rel, t0)) if req.return_info else op


# ---------------------------------------------------------------------------------------
# factorize
# ---------------------------------------------------------------------------------------

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
) -> DeBut | tuple[DeBut, FitInfo]:
    """Fit a dense matrix with a DeBut product: the best operator for a chain.

    Parameters
    ----------
    W : array_like
        The ``m x n`` matrix to approximate: float32, float64, complex64 or complex128 (integers
        become float64, float16 float32).  NaN and Inf are refused.
    chain : Chain or str
        The factor shapes: a :class:`~debutla.Chain`, a string in the paper's notation
        (``"16 <-(2,8,1)- 128"``), or ``"auto"`` (:func:`~debutla.design_chain` for
        ``W``'s shape).  Its size ``(M, N)`` must be at least ``(m, n)``; a larger chain
        fits the zero-padded ``M x N`` matrix and the operator keeps ``W``'s shape.
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
        chain is not chainable (see Notes).

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
                    init, return_info)
    m, n = req.A.shape
    fchain = req.chain if req.chain is not None else design_chain(m, n)
    if req.method == "hierarchical" and analyse_chain(fchain) is None:
        raise ValueError(not_chainable_message(fchain,
                                               "factorize(chain, method='hierarchical')"))
    init_vals = None if req.init is None else _check_init(req.init, fchain, req.A.dtype)
    prob = _prepare(req.A, fchain)
    if prob.norm2 == 0:
        zero = prob.to_fitted([np.zeros(spec.value_shape, dtype=req.A.dtype)
                               for spec in fchain])
        return _assemble(prob, req, _Run(zero, [0.0], stop="exact"), t0)
    hier = req.method != "als" and prob.st is not None and init_vals is None
    total = (req.max_sweeps if req.method != "hierarchical" else 0) + int(hier)
    bar = _Progress(req.progress, total, f"factorize[{req.method}]")
    try:
        run = _refine(prob, req, _start(prob, req, init_vals, bar), bar)
    finally:
        bar.close()
    return _assemble(prob, req, run, t0)


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
    A = _check_W(W, "lowrank_error(W)")
    k = check_int(n_params, "n_params", where="lowrank_error(n_params)", min=0)
    k //= A.shape[0] + A.shape[1]
    # squared singular values = eigenvalues of the smaller Gram matrix (much cheaper
    # than an SVD; the tail sum is accurate to about eps * ||W||^2)
    B = A.astype(np.complex128 if A.dtype.kind == "c" else np.float64)
    G = B @ B.conj().T if B.shape[0] <= B.shape[1] else B.conj().T @ B
    lam = np.clip(np.linalg.eigvalsh(G)[::-1], 0, None)
    tot = float(np.sum(lam))
    if tot == 0:
        return 0.0, k
    rest = float(np.sum(lam[k:]))
    return math.sqrt(rest / tot), k
