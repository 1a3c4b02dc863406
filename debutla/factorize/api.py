"""The public :func:`factorize` and its :class:`FitInfo` result."""

from __future__ import annotations

import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..chain import Chain, design_chain
from .._validation import as_generator
from ..operator import DeBut
from .als import ALSState, GeneralALSState, core_product
from .hierarchical import (
    Structure,
    analyse_chain,
    core_tensor,
    core_to_full,
    fitted_factors,
    full_to_core,
    hierarchical_balanced,
    hierarchical_core,
    not_chainable_message,
    sqnorm,
    user_factors,
)

__all__ = ["factorize", "FitInfo", "lowrank_error", "METHODS", "ORDERS"]

METHODS = ("hierarchical", "als", "auto")
ORDERS = ("l2r", "balanced")
_DEFAULT_MAX_SWEEPS = {"als": 200, "auto": 100}
_FLOAT_FOR = {
    np.dtype(np.float16): np.dtype(np.float32),
}


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
# argument checks
# ---------------------------------------------------------------------------------------

def _check_W(W: Any) -> np.ndarray:
    if hasattr(W, "__cuda_array_interface__") or type(W).__module__.split(".")[0] == "cupy":
        raise TypeError("factorize(W): W must be a NumPy array; CuPy arrays are not "
                        "supported yet (move it with W.get())")
    if isinstance(W, DeBut):
        raise TypeError("factorize(W): W must be a dense array; use W.to_dense() to refit "
                        "a DeBut operator")
    try:
        A = np.asarray(W)
    except Exception as e:  # pragma: no cover - exotic array-likes
        raise TypeError(f"factorize(W): W must be array-like, got {type(W).__name__}") from e
    if A.dtype.kind not in "biufc":
        raise TypeError(f"factorize(W): W must be numeric (float32, float64, complex64, "
                        f"complex128), got dtype {A.dtype}")
    if A.ndim != 2:
        raise ValueError(f"factorize(W): W must be a 2-D matrix, got shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"factorize(W): W must not be empty, got shape {A.shape}")
    if A.dtype.kind in "biu":
        A = A.astype(np.float64)
    elif A.dtype in _FLOAT_FOR:
        A = A.astype(_FLOAT_FOR[A.dtype])
    elif A.dtype not in (np.float32, np.float64, np.complex64, np.complex128):
        raise TypeError(f"factorize(W): dtype {A.dtype} is not supported; use float32, "
                        f"float64, complex64 or complex128")
    if not np.isfinite(A).all():
        bad = int(np.size(A) - np.count_nonzero(np.isfinite(A)))
        raise ValueError(f"factorize(W): W contains {bad} NaN or Inf entries; all entries "
                         f"must be finite")
    return A


def _suggest(m: int, n: int) -> str:
    try:
        return f"; for example design_chain({m}, {n}) gives '{design_chain(m, n)}'"
    except Exception:  # pragma: no cover - defensive
        return ""


def _check_chain(chain: Any, m: int, n: int) -> Chain:
    if isinstance(chain, str):
        if chain.strip().lower() == "auto":
            return design_chain(m, n)
        try:
            chain = Chain.parse(chain)
        except ValueError as e:
            raise ValueError(f"factorize(chain): {e}") from None
    if not isinstance(chain, Chain):
        raise TypeError(f"factorize(chain): chain must be a Chain, a string in the paper's "
                        f"notation or 'auto', got {type(chain).__name__}")
    P, Q = chain.shape
    if P < m or Q < n:
        raise ValueError(
            f"factorize(chain): the chain's size ({P}, {Q}) cannot serve W of shape "
            f"({m}, {n}); a chain serves W when its output size is >= {m} and its input "
            f"size is >= {n} (W is then zero-padded){_suggest(m, n)}")
    return chain


def _check_int_arg(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"factorize({name}): {name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"factorize({name}): {name} must be >= {lo}, got {v}")
    return int(v)


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"factorize(tol): tol must be a real number, got {tol!r}")
    tol = float(tol)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"factorize(tol): tol must be finite and >= 0, got {tol}")
    return tol


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

    def update(self, err: float | None = None) -> None:
        if not self.enabled:
            return
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            if err is not None:
                self.bar.set_postfix(rel_error=f"{err:.4g}", refresh=False)
        else:
            msg = f"\r{self.desc}: {self.n}/{self.total}"
            if err is not None:
                msg += f" rel_error={err:.4g}"
            sys.stderr.write(msg)
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
# factorize
# ---------------------------------------------------------------------------------------

def _random_core(st: Structure, dtype: np.dtype, rng: np.random.Generator):
    """The ALS start: :meth:`DeBut.random` values (scale-preserving), core layout."""
    return full_to_core(DeBut.random(st.chain, seed=rng, dtype=dtype).factors, st)


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
    t_start = time.perf_counter()
    A = _check_W(W)
    m, n = A.shape
    chain = _check_chain(chain, m, n)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"factorize(method): method must be one of {METHODS}, "
                         f"got {method!r}")
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"factorize(order): order must be one of {ORDERS}, got {order!r}")
    if max_sweeps is None:
        max_sweeps = _DEFAULT_MAX_SWEEPS.get(method, 0)
    max_sweeps = _check_int_arg("max_sweeps", max_sweeps, 0)
    tol = _check_tol(tol)
    rng = as_generator(seed, where="factorize(seed)")
    if callback is not None and not callable(callback):
        raise TypeError(f"factorize(callback): callback must be callable, got {callback!r}")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"factorize(progress): progress must be a bool, got {progress!r}")
    if not isinstance(return_info, (bool, np.bool_)):
        raise TypeError(f"factorize(return_info): return_info must be a bool, "
                        f"got {return_info!r}")
    st = analyse_chain(chain)
    if st is None and method == "hierarchical":
        raise ValueError(not_chainable_message(chain, "factorize(chain, method='hierarchical'"))
    dtype = A.dtype
    init_vals = None if init is None else _check_init(init, chain, dtype)

    # zero-pad to the chain's size and orient for the fitted (t-chained) chain
    P, Q = chain.shape
    if (P, Q) != (m, n):
        Wp = np.zeros((P, Q), dtype=dtype)
        Wp[:m, :n] = A
    else:
        Wp = A
    normW2 = sqnorm(A)
    normW = math.sqrt(normW2)

    if st is None:
        # valid chain whose entries are not single paths: matrix-free ALS
        def to_user(vals):
            return vals
    else:
        def to_user(vals):
            return user_factors(core_to_full(vals, st), st)

    def finish(vals, history, sweeps, reason, splits):
        op = DeBut(chain, to_user(vals), shape=(m, n))
        if normW2 > 0:
            if st is not None and st.G == 1:
                # the dense product from the path formula: O(m n), no identity applied
                D = core_product(vals).reshape(st.Mc, st.Nc)
                D = (D.T if st.transposed else D)[:m, :n]
            else:
                D = op.with_backend("numpy").to_dense()
            rel = math.sqrt(sqnorm(D - A)) / normW
        else:
            rel = 0.0
        info = FitInfo(rel_error=rel, method=method, chain=chain,
                       seconds=time.perf_counter() - t_start, history=list(history),
                       sweeps=sweeps, stop_reason=reason, split_errors=tuple(splits),
                       n_params=chain.nnz, shape=(m, n))
        return (op, info) if return_info else op

    if normW2 == 0:
        zero = [np.zeros(spec.value_shape, dtype=dtype) for spec in chain]
        op = DeBut(chain, zero, shape=(m, n))
        info = FitInfo(rel_error=0.0, method=method, chain=chain,
                       seconds=time.perf_counter() - t_start, history=[0.0], sweeps=0,
                       stop_reason="exact", n_params=chain.nnz, shape=(m, n))
        return (op, info) if return_info else op

    if st is None:
        T, off2 = None, 0.0
    else:
        T, off2 = core_tensor(Wp.T if st.transposed else Wp, st)

    n_iter = max_sweeps if method != "hierarchical" else 0
    hier_stage = method != "als" and st is not None and init_vals is None
    bar = _Progress(bool(progress), n_iter + (1 if hier_stage else 0),
                    f"factorize[{method}]")
    history: list[float] = []
    splits: list[float] = []
    try:
        if st is None or method == "als" or init_vals is not None:
            # random (seeded) or given start
            if st is None:
                vals = (init_vals if init_vals is not None
                        else [np.array(v) for v in DeBut.random(chain, seed=rng,
                                                                dtype=dtype).factors])
            elif init_vals is not None:
                vals = full_to_core(fitted_factors(init_vals, st), st)
            else:
                vals = _random_core(st, dtype, rng)
            start_err = None
        else:
            if order == "balanced":
                vals, step2 = hierarchical_balanced(T, st)
            else:
                vals, step2 = hierarchical_core(T, st.rs)
            splits = [math.sqrt(max(e, 0.0)) / normW for e in step2]
            if order == "balanced":  # split errors are not orthogonal: measure
                start_err = math.sqrt(sqnorm(core_product(vals) - T) + off2) / normW
            else:
                start_err = math.sqrt(max(sum(step2), 0.0) + off2) / normW
            history.append(start_err)
            bar.update(start_err)
            if callback is not None and callback(0, start_err) is False:
                return finish(vals, history, 0, "callback", splits)
        if method == "hierarchical":
            return finish(vals, history, 0, "hierarchical", splits)

        eps_stop = 8 * np.finfo(dtype).eps
        state = (GeneralALSState(Wp, chain, vals) if st is None
                 else ALSState(T, st.rs, vals))
        best_vals = [v.copy() for v in vals]
        best = start_err if start_err is not None else math.inf
        prev = best
        reason = "max_sweeps"
        sweeps = 0
        if start_err is not None and start_err <= eps_stop:
            return finish(best_vals, history, 0, "exact", splits)
        for sweep in range(1, max_sweeps + 1):
            e2 = state.sweep_up() if sweep % 2 == 1 else state.sweep_down()
            err = math.sqrt(max(e2, 0.0) + off2) / normW
            sweeps = sweep
            history.append(err)
            bar.update(err)
            if err < best:
                best = err
                best_vals = [v.copy() for v in state.vals]
            if callback is not None and callback(sweep, err) is False:
                reason = "callback"
                break
            if err <= eps_stop:
                reason = "exact"
                break
            if math.isfinite(prev) and prev - err <= tol * prev:
                reason = "tol"
                break
            prev = err
        return finish(best_vals, history, sweeps, reason, splits)
    finally:
        bar.close()


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
    A = _check_W(W)
    k = _check_int_arg("n_params", n_params, 0) // (A.shape[0] + A.shape[1])
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
