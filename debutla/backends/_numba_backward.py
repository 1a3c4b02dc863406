"""Source generation of the chain-specialised backward kernel (value and input gradients).

For ``Y = X @ D.T`` with ``D = R_{N-1} ... R_0`` and ``G = dL/dY``, the kernel computes,
one tile of ``W`` rows at a time,

1. ``X_0`` = the tile of ``X``, gathered features-major (zero-padded to ``Q``), then every
   factor's input ``X_{i+1} = R_i X_i``, each in its own scratch array (two slices of one
   array as a pass's source and destination are not vectorised by LLVM: 6.3x slower,
   ``benchmarks/README_kernels.md``; sizes: :func:`scratch_sizes`);
2. ``G_{N}`` = the tile of ``G`` (zero-padded to ``P``), then for ``i = N-1 .. 0``:
   the value gradient ``dV_i[b, i, j, k] += sum_w G_i[(b,i,k), w] X_i[(b,j,k), w]`` and
   the input gradient of the factor, ``G_{i-1} = R_i^T G_i``;
3. ``G_0`` (its first ``n`` features) scattered to the rows of ``dL/dX``.

Every size is a constant of the generated source, as in the forward kernels
(:mod:`debutla.backends._numba_codegen`), and the factor passes of steps 1 and 2 are the
forward kernels' own panel passes (:func:`~debutla.backends._numba_codegen.
_emit_factor_panel`): ``R_i^T`` is the factor ``(nb, s, r, t)`` whose values are ``R_i``'s
transposed in each block, so it runs the same register-blocked micro-kernel.  The value
gradients are blocks of up to four output rows against two input rows (eight dot
products of ``W`` columns from six row loads), in explicit vector code
(:func:`debutla.backends._numba_simd.add_dots`; a change there needs a new
:data:`BACKWARD_VERSION`, as Numba's cache of a generated module does not see it).

Generated functions (``nogil``, ``cache=True``, compiled lazily per dtype):

``tiles(V, VT, X, G, GX, gvs, bounds, g0, g1, xn, gm, need_x, A, ga, gb, wr, zero_)``
    Groups ``g0 .. g1-1`` of rows: group ``g`` is rows ``bounds[g] .. bounds[g+1]-1``
    (tiles of ``W``) and accumulates its value gradients into ``gvs[g]`` (packed like
    the values).  ``V`` the packed values (application order), ``VT`` the same with
    each factor's blocks transposed, ``xn``/``gm`` the served widths of ``X``/``G``
    (at most ``Q``/``P``), ``A`` one scratch array per factor input, ``ga``/``gb`` the
    gradient scratch, ``wr`` the column count of the passes (``W``, at run time: a
    constant trip count below 16 unrolls into scalar code), ``zero_`` a zero of the
    dtype.
``tiles_placed``
    :func:`tiles` after :func:`debutla.backends._numba_stack.place_stack`.
"""

from __future__ import annotations

from functools import lru_cache

from . import _cache
from ._numba_codegen import GENERATOR_VERSION, _def, _emit_factor_panel, _Src
from ._numba_codegen import norm_shapes as _norm

__all__ = ["generate_source", "kernel_module", "uncached_kernel_module", "replace_module",
           "scratch_sizes"]

#: Bumped when the generated backward changes (with the forward's generator version,
#: which its panel passes come from).
BACKWARD_VERSION = "2"
_VG_GROUP = 4  # most output rows per value-gradient column loop
_VG_SUMS = 8  # most sums per value-gradient column loop (G rows times J columns)


def _emit_value_grad(S: _Src, ind: int, spec, gname: str, cur: str, xname: str, W: int,
                     tag: str) -> None:
    """``gname[((b r + i) s + j) t + k] += sum_c cur[row (b,i,k)] * xname[row (b,j,k)]``.

    ``G`` rows of ``cur`` (block rows ``i``) against ``J`` rows of ``xname`` (columns
    ``j``) per column loop: ``G J`` sums from ``G + J`` loads per column.
    """
    nb, r, s, t = spec
    G = next(g for g in (4, 2, 1) if r % g == 0 and g <= _VG_GROUP)
    J = max(1, min(s, _VG_SUMS // G))
    b, i, k, j = f"b{tag}", f"i{tag}", f"k{tag}", f"j{tag}"
    ind1 = S.loop(ind, b, nb)
    ind2 = S.loop(ind1, k, t)
    ind3 = S.loop(ind2, i, r // G)
    bri = S.plus(S.mul(b, r), S.mul(i, G))
    S.add(ind3, f"g_ = {S.mul(S.plus(S.mul(bri, t), k), W)}")
    S.add(ind3, f"v_ = {S.plus(S.mul(S.mul(bri, s), t), k)}")
    S.add(ind3, f"x_ = {S.mul(S.plus(S.mul(S.mul(b, s), t), k), W)}")

    def sums(ind_: int, jexpr: str, nj: int) -> None:
        S.add(ind_, f"xj_ = {S.plus('x_', S.mul(jexpr, t * W))}")
        S.add(ind_, f"vj_ = {S.plus('v_', S.mul(jexpr, t))}")
        # G x nj dot products of the W columns (vector code: _numba_simd.add_dots)
        S.add(ind_, f"add_dots({gname}, vj_, {S.c(s * t)}, {S.c(t)}, {cur}, g_, "
                    f"{S.c(t * W)}, {xname}, xj_, {S.c(t * W)}, {G}, {nj}, {W})")

    full = s // J
    if full == 1:
        sums(ind3, S.c(0), J)
    else:
        S.add(ind3, f"for {j} in range({S.c(full)}):")
        sums(ind3 + 1, S.mul(j, J), J)
    if s % J:
        sums(ind3, S.c(full * J), s % J)


@lru_cache(maxsize=256)
def scratch_sizes(shapes: tuple, W: int) -> tuple[int, int, int]:
    """``(count, acts, grads)``: the kernel's ``A`` is ``count`` arrays (one per factor
    input) of ``acts`` entries each, ``ga`` and ``gb`` hold ``grads`` entries each.

    Examples
    --------
    >>> scratch_sizes(((2, 2, 2, 1), (1, 2, 2, 2)), 16)
    (2, 64, 64)
    """
    qs = [nb * s * t for nb, r, s, t in shapes]
    ps = [nb * r * t for nb, r, s, t in shapes]
    return len(shapes), max(qs) * W, max(qs + ps) * W


def generate_source(shapes: tuple, W: int) -> str:
    """Python source of the backward kernel module for a chain and tile width ``W``."""
    N = len(shapes)
    qs = [nb * s * t for nb, r, s, t in shapes]
    ps = [nb * r * t for nb, r, s, t in shapes]
    Q, P = qs[0], ps[-1]
    offs = [0]
    for nb, r, s, t in shapes:
        offs.append(offs[-1] + nb * r * s * t)
    S = _Src()
    dec = ("@njit(cache=True, nogil=True, fastmath={'contract', 'reassoc'}, "
           "error_model='numpy')")
    # one small function per pass (Numba's compile time grows faster than the size of a
    # function: one function of every pass compiled 2-3x slower)
    for n in range(N):
        nb, r, s, t = shapes[n]
        if n < N - 1:
            _def(S, f"fw{n}(Vn, src, dst, wr)", dec)
            _emit_factor_panel(S, 1, shapes[n], "Vn", "src", "dst", W, "_f")
            S.add(0, "")
        _def(S, f"vg{n}(Dn, cur, An, wr, zero_)", dec)
        _emit_value_grad(S, 1, shapes[n], "Dn", "cur", "An", W, "_g")
        S.add(0, "")
        _def(S, f"tr{n}(Tn, cur, nxt, wr)", dec)
        _emit_factor_panel(S, 1, (nb, s, r, t), "Tn", "cur", "nxt", W, "_t")
        S.add(0, "")
    S.add(0, dec)
    S.add(0, "def tiles(V, VT, X, G, GX, gvs, bounds, g0, g1, xn, gm, need_x, A, ga, gb, "
             "wr, zero_):")
    for n in range(N):
        S.add(1, f"A{n} = A[{n}]")
    Wc = S.c(W)
    S.add(1, "for g in range(g0, g1):")
    S.add(2, "gv = gvs[g]")
    S.add(2, "r0 = bounds[g]")
    S.add(2, "hi = bounds[g + 1]")
    S.add(2, "while r0 < hi:")
    S.add(3, f"w = min({Wc}, hi - r0)")
    S.add(3, f"gather_tile(X, r0, w, xn, {S.c(Q)}, {Wc}, A0)")
    for n in range(N - 1):
        S.add(3, f"fw{n}(V[{offs[n]}:{offs[n + 1]}], A{n}, A{n + 1}, wr)")
    S.add(3, f"gather_tile(G, r0, w, gm, {S.c(P)}, {Wc}, ga)")
    cur, other = "ga", "gb"
    for n in reversed(range(N)):
        S.add(3, f"vg{n}(gv[{offs[n]}:{offs[n + 1]}], {cur}, A{n}, wr, zero_)")
        call = f"tr{n}(VT[{offs[n]}:{offs[n + 1]}], {cur}, {other}, wr)"
        if n > 0:
            S.add(3, call)
            cur, other = other, cur
        else:
            S.add(3, "if need_x:")
            S.add(4, call)
            S.add(4, f"scatter_tile({other}, r0, w, xn, {Wc}, GX)")
    S.add(3, f"r0 += {Wc}")
    S.add(0, "")
    S.add(0, dec)
    S.add(0, "def tiles_placed(V, VT, X, G, GX, gvs, bounds, g0, g1, xn, gm, need_x, A, ga, "
             "gb, wr, zero_):")
    S.add(1, "place_stack()")
    S.add(1, "tiles(V, VT, X, G, GX, gvs, bounds, g0, g1, xn, gm, need_x, A, ga, gb, wr, "
             "zero_)")
    S.add(0, "")
    head = [
        f'"""debutla Numba backward kernel (generated, version {BACKWARD_VERSION}.'
        f'{GENERATOR_VERSION}; do not edit).',
        "",
        f"chain (nb, r, s, t) in application order: {list(shapes)}",
        f"tile width W = {W}; Q = {Q}, P = {P}",
        '"""',
        "import numpy as np",
        "from numba import njit",
        "from debutla.backends._numba_tiles import gather_tile, scatter_tile",
        "from debutla.backends._numba_stack import place_stack",
        "from debutla.backends._numba_simd import add_dots, wide_vectors",
        "",
        f"W = {W}",
    ]
    head += [f"_u{n} = np.uint64({n})" for n in sorted(S.consts)]
    head += ["", ""]
    return "\n".join(head + S.lines) + "\n"


def kernel_module(shapes: tuple, W: int):
    """The backward module for a chain and tile width, through the checked kernel cache
    (made once per process, as :func:`._numba_codegen.kernel_module`).
    """
    key = (_norm(shapes), int(W))
    mod = _modules.get(key)
    if mod is None:
        mod = _modules[key] = _cache.load_module(generate_source(*key), "bw")
    return mod


#: Backward modules by ``(shapes, W)`` (see ``_numba_codegen._modules``).
_modules: dict = {}


def replace_module(shapes: tuple, W: int, mod) -> None:
    """Serve ``mod`` (compiled in memory after a cache failure) from now on."""
    _modules[(_norm(shapes), int(W))] = mod


def uncached_kernel_module(shapes: tuple, W: int):
    """The backward module compiled in memory (after a cache failure)."""
    return _cache.uncached_module(generate_source(_norm(shapes), int(W)), "bw")
