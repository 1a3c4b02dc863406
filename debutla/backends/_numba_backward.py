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

Where the chain's first factors nest (:func:`step_plan`, ``README_kernels.md`` change
21), they run on at most 128 input features of the tile at a time (a *step*).  In 1,
they compute their outputs step by step, their inputs in small blocks; 2 ends with a
second sweep of steps that recomputes those blocks and runs the gradients back through
the step's factors while the step is in cache.  The arithmetic and its order are those
of the whole-tile passes, so the results are the same bits; what changes is that those
factor inputs never fill tile-sized arrays (7 of the 4096 butterfly's 12: its
tile-sized scratch at ``W = 32`` goes from 6 MB to 3 MB, against a 2 MiB L2).

Where at least four factors follow the step and each has a ``t`` that is a multiple of
the first one's, ``T0`` (:func:`group_plan`, change 22), they run by *residue groups*:
each factor maps the features of one class of ``k mod T0`` onto the same class, so for
a group of classes the kernel recomputes those factors' inputs from the step's output
and runs their gradients back, with the group's features of every level packed in
small blocks (:class:`debutla.backends._numba_codegen.Residues`); the first factor
reads the step's output, and the last one the output gradient, from the tile-sized
arrays.  The same bits again; the 4096 butterfly then keeps two tile-sized factor
inputs instead of six.

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
    (at most ``Q``/``P``), ``A`` one scratch array per factor input (and two for the
    step's gradients: :func:`scratch_sizes`), ``ga``/``gb`` the
    gradient scratch, ``wr`` the column count of the passes (``W``, at run time: a
    constant trip count below 16 unrolls into scalar code), ``zero_`` a zero of the
    dtype.
``tiles_placed``
    :func:`tiles` after :func:`debutla.backends._numba_stack.place_stack`.
"""

from __future__ import annotations

from functools import lru_cache

from . import _cache
from ._numba_codegen import (GENERATOR_VERSION, Residues, _block_loop, _def,
                             _emit_factor_panel, _k_loop, _nests, _Src)
from ._numba_codegen import norm_shapes as _norm

__all__ = ["generate_source", "kernel_module", "uncached_kernel_module", "replace_module",
           "scratch_sizes", "step_plan", "group_plan"]

#: Bumped when the generated backward changes (with the forward's generator version,
#: which its panel passes come from).
BACKWARD_VERSION = "3"
_VG_GROUP = 4  # most output rows per value-gradient column loop
_VG_SUMS = 8  # most sums per value-gradient column loop (G rows times J columns)


def _emit_value_grad(S: _Src, ind: int, spec, gname: str, cur: str, xname: str, W: int,
                     tag: str, blocks: tuple[str, str] | None = None,
                     res: Residues | None = None) -> None:
    """``gname[((b r + i) s + j) t + k] += sum_c cur[row (b,i,k)] * xname[row (b,j,k)]``.

    ``G`` rows of ``cur`` (block rows ``i``) against ``J`` rows of ``xname`` (columns
    ``j``) per column loop: ``G J`` sums from ``G + J`` loads per column.  ``blocks``:
    two expressions bounding the blocks (default all ``nb``); ``res``: only the
    features of a residue group (``cur`` the output side, ``xname`` the input side).
    """
    nb, r, s, t = spec
    G = next(g for g in (4, 2, 1) if r % g == 0 and g <= _VG_GROUP)
    J = max(1, min(s, _VG_SUMS // G))
    b, i, k, j = f"b{tag}", f"i{tag}", f"k{tag}", f"j{tag}"
    ind1 = _block_loop(S, ind, b, nb, blocks)
    ind2, k_in, k_out, t_in, t_out = _k_loop(S, ind1, k, t, tag, res)
    ind3 = S.loop(ind2, i, r // G)
    bri = S.plus(S.mul(b, r), S.mul(i, G))
    S.add(ind3, f"g_ = {S.mul(S.plus(S.mul(bri, t_out), k_out), W)}")
    S.add(ind3, f"v_ = {S.plus(S.mul(S.mul(bri, s), t), k)}")
    S.add(ind3, f"x_ = {S.mul(S.plus(S.mul(S.mul(b, s), t_in), k_in), W)}")

    def sums(ind_: int, jexpr: str, nj: int) -> None:
        S.add(ind_, f"xj_ = {S.plus('x_', S.mul(jexpr, t_in * W))}")
        S.add(ind_, f"vj_ = {S.plus('v_', S.mul(jexpr, t))}")
        # G x nj dot products of the W columns (vector code: _numba_simd.add_dots)
        S.add(ind_, f"add_dots({gname}, vj_, {S.c(s * t)}, {S.c(t)}, {cur}, g_, "
                    f"{S.c(t_out * W)}, {xname}, xj_, {S.c(t_in * W)}, {G}, {nj}, {W})")

    full = s // J
    if full == 1:
        sums(ind3, S.c(0), J)
    else:
        S.add(ind3, f"for {j} in range({S.c(full)}):")
        sums(ind3 + 1, S.mul(j, J), J)
    if s % J:
        sums(ind3, S.c(full * J), s % J)


#: The first nesting factors of a chain run step by step (``README_kernels.md``,
#: change 21): switches measured by same-round A/B runs.
_STEP = True
_STEP_MAX = 128  # the widest block (in the chain's input features) of a factor run by step
_STEP_MIN = 64  # the chain's input features per step, at least


def step_plan(shapes) -> tuple[int, tuple[int, ...]]:
    """``(CF, spans)``: the backward runs the chain's first ``len(spans)`` factors on
    ``CF`` input features of a tile at a time; ``spans[n]``: the chain's input features
    behind one block of factor ``n``.  ``(0, ())`` when every factor runs on the whole
    tile.

    Factor 0 must have ``t = 1`` (each block reads adjacent features) and each later
    factor of the step must nest in the one before (:func:`._numba_codegen._nests`: a
    block of it reads the outputs of whole blocks before it), with blocks of at most
    :data:`_STEP_MAX` input features; the last factor of the chain never joins, and a
    step of fewer than two factors is none.  ``CF`` is a multiple of the last span, at
    least :data:`_STEP_MIN`.  The factor inputs inside the step then live in small
    blocks (in L1) instead of one tile-sized array each, recomputed for the gradients.

    Examples
    --------
    >>> step_plan(((512, 8, 9, 1), (256, 2, 2, 8), (128, 2, 2, 16), (64, 2, 2, 32),
    ...            (16, 2, 4, 64), (1, 2, 16, 128)))  # VGG's first factors: 288 > 128
    (72, (9, 18, 36, 72))
    >>> step_plan(((8, 2, 2, 4), (4, 2, 2, 8)))  # t = 4: a block's inputs not adjacent
    (0, ())
    """
    if not _STEP or shapes[0][3] != 1 or shapes[0][2] > _STEP_MAX:
        return 0, ()
    spans = [shapes[0][2]]
    for n in range(1, len(shapes) - 1):
        nxt = spans[-1] * shapes[n][2]
        if not _nests(shapes[n - 1], shapes[n]) or nxt > _STEP_MAX:
            break
        spans.append(nxt)
    if len(spans) < 2:
        return 0, ()
    base = spans[-1]
    return base * max(1, -(-_STEP_MIN // base)), tuple(spans)


_GROUPS = True  # the factors after the step run by residue groups (change 22)
_GROUP_ROWS = 128  # most features of a level in one residue group
_GROUP_MIN = 4  # fewest factors after the step for the residue groups


def group_plan(shapes) -> tuple[int, int]:
    """``(T0, c)``: the factors after the step (:func:`step_plan`) run on the features
    whose ``k mod T0`` lies in one group of ``c`` residues at a time (``(0, 0)``: on
    the whole tile).

    A factor whose ``t`` is a multiple of ``T0`` maps each residue class of ``k mod
    T0`` onto itself (:class:`._numba_codegen.Residues`), so when every factor after
    the step has such a ``t`` (``T0``: the first one's), a group of classes is a
    problem of its own: its factor inputs and gradients are recomputed and kept packed
    in small blocks (at most :data:`_GROUP_ROWS` features of a level) instead of one
    tile-sized array each; the first factor reads the step's output, and the last the
    output gradient, from the tile-sized arrays.  There must be a step, and at least
    :data:`_GROUP_MIN` factors after it: the groups read the values, and add to their
    gradients, ``c`` adjacent entries at a time, and with three factors after the step
    (VGG, the radix-4 butterfly) that cost more than the two tile-sized arrays it
    saves (``README_kernels.md``, change 22).

    Examples
    --------
    >>> group_plan(tuple((2048 >> n, 2, 2, 1 << n) for n in range(12)))  # butterfly
    (128, 4)
    """
    CF, spans = step_plan(tuple(shapes))
    K, N = len(spans), len(shapes)
    if not (_GROUPS and CF and N - K >= max(2, _GROUP_MIN)):
        return 0, 0
    T0 = shapes[K][3]
    if T0 < 2 or any(t % T0 for nb, r, s, t in shapes[K:]):
        return 0, 0
    rows = max(nb * s * t for nb, r, s, t in shapes[K + 1:]) // T0
    c = 1
    while T0 % (2 * c) == 0 and 2 * c * rows <= _GROUP_ROWS:
        c *= 2
    return T0, c


@lru_cache(maxsize=256)
def scratch_sizes(shapes: tuple, W: int) -> tuple[int, int, int]:
    """``(count, acts, grads)``: the kernel's ``A`` is ``count`` arrays of ``acts``
    entries each (one per factor input, and two more for the gradients inside a step
    when the chain has a :func:`step_plan`), ``ga`` and ``gb`` hold ``grads`` entries
    each.

    Examples
    --------
    >>> scratch_sizes(((2, 2, 2, 1), (1, 2, 2, 2)), 16)
    (2, 64, 64)
    """
    qs = [nb * s * t for nb, r, s, t in shapes]
    ps = [nb * r * t for nb, r, s, t in shapes]
    extra = 2 if step_plan(tuple(shapes))[0] else 0
    return len(shapes) + extra, max(qs) * W, max(qs + ps) * W


def _emit_step(S: _Src, ind: int, shapes, offs, spans, nf: int, W: int,
               grads: tuple[str, str] | None) -> None:
    """One step of ``nf`` input features from ``fs_`` on: the factors of ``spans`` on
    their blocks there.

    Without ``grads``, the recompute: factor ``n``'s input in ``A<n>`` (a block of the
    step's size), the last factor's output into the tile-sized input of the factor
    after the step, at the step's place.  With ``grads = (cur, other)`` (the tile-sized
    gradient of the step's last output, and the array of the input gradient, written
    when ``need_x``), the factor inputs are recomputed, then the gradients run back
    through the step's factors (theirs in ``A<N>`` and ``A<N+1>``).
    """
    K, N = len(spans), len(shapes)
    Wc = S.c(W)
    for n in range(K):
        S.add(ind, f"q{n}_ = fs_ // {S.c(spans[n])}")

    def part(arr: str, n: int) -> str:  # factor n's values from the step's first block
        nb, r, s, t = shapes[n]
        return f"{arr}[{S.c(offs[n])} + q{n}_ * {S.c(r * s * t)}:]"

    def nblk(n: int) -> str:
        return S.c(nf // spans[n])

    x0 = f"A0[fs_ * {Wc}:]"
    nb, r, s, t = shapes[K - 1]
    at = f"q{K - 1}_ * {S.c(r * t * W)}"  # the step's outputs in the tile-sized arrays
    last = K if grads is None else K - 1  # the recompute of the gradients stops before
    for n in range(last):
        src = x0 if n == 0 else f"A{n}"
        dst = f"A{K}[{at}:]" if n == K - 1 else f"A{n + 1}"
        S.add(ind, f"fw{n}({part('V', n)}, {src}, {dst}, wr, {nblk(n)})")
    if grads is None:
        return
    cur, other = grads
    g = f"{cur}[{at}:]"
    local = [f"A{N}", f"A{N + 1}"]
    for n in reversed(range(K)):
        xin = x0 if n == 0 else f"A{n}"
        S.add(ind, f"vg{n}({part('gv', n)}, {g}, {xin}, wr, zero_, {nblk(n)})")
        if n > 0:
            S.add(ind, f"tr{n}({part('VT', n)}, {g}, {local[0]}, wr, {nblk(n)})")
            g = local[0]
            local.reverse()
        else:
            S.add(ind, "if need_x:")
            S.add(ind + 1, f"tr0({part('VT', 0)}, {g}, {other}[fs_ * {Wc}:], wr, "
                           f"{nblk(0)})")


def _emit_steps(S: _Src, ind: int, shapes, offs, CF: int, spans, W: int,
                grads: tuple[str, str] | None = None) -> None:
    """Every step of a tile (:func:`_emit_step`): whole steps of ``CF`` features in a
    loop, then the features left.
    """
    Q = shapes[0][0] * shapes[0][2]
    nfull, rest = divmod(Q, CF)
    if nfull:
        S.add(ind, f"for st_ in range({S.c(nfull)}):")
        S.add(ind + 1, f"fs_ = st_ * {S.c(CF)}")
        _emit_step(S, ind + 1, shapes, offs, spans, CF, W, grads)
    if rest:
        S.add(ind, f"fs_ = {S.c(nfull * CF)}")
        _emit_step(S, ind, shapes, offs, spans, rest, W, grads)


def generate_source(shapes: tuple, W: int) -> str:
    """Python source of the backward kernel module for a chain and tile width ``W``."""
    N = len(shapes)
    qs = [nb * s * t for nb, r, s, t in shapes]
    ps = [nb * r * t for nb, r, s, t in shapes]
    Q, P = qs[0], ps[-1]
    offs = [0]
    for nb, r, s, t in shapes:
        offs.append(offs[-1] + nb * r * s * t)
    CF, spans = step_plan(tuple(shapes))
    K = len(spans)  # factors run step by step (their functions take a block count)
    T0, c = group_plan(tuple(shapes))  # the factors from K on by residue groups

    def res(n: int, in_local: bool, out_local: bool) -> Residues | None:
        return Residues(T0, c, "k0_", in_local, out_local) if T0 and n >= K else None
    S = _Src()
    dec = ("@njit(cache=True, nogil=True, fastmath={'contract', 'reassoc'}, "
           "error_model='numpy')")
    # one small function per pass (Numba's compile time grows faster than the size of a
    # function: one function of every pass compiled 2-3x slower)
    for n in range(N):
        nb, r, s, t = shapes[n]
        cnt = ", nblk" if n < K else (", k0_" if T0 else "")
        blocks = (S.c(0), "nblk") if n < K else None
        # in a residue group: the step's output (the input of factor K) and the output
        # gradient are tile-sized arrays, the rest packed blocks
        if n < N - 1:
            _def(S, f"fw{n}(Vn, src, dst, wr{cnt})", dec)
            _emit_factor_panel(S, 1, shapes[n], "Vn", "src", "dst", W, "_f", blocks,
                               res(n, n != K, True))
            S.add(0, "")
        _def(S, f"vg{n}(Dn, cur, An, wr, zero_{cnt})", dec)
        _emit_value_grad(S, 1, shapes[n], "Dn", "cur", "An", W, "_g", blocks,
                         res(n, n != K, n != N - 1))
        S.add(0, "")
        _def(S, f"tr{n}(Tn, cur, nxt, wr{cnt})", dec)
        _emit_factor_panel(S, 1, (nb, s, r, t), "Tn", "cur", "nxt", W, "_t", blocks,
                           res(n, n != N - 1, n != K))
        S.add(0, "")
    S.add(0, dec)
    S.add(0, "def tiles(V, VT, X, G, GX, gvs, bounds, g0, g1, xn, gm, need_x, A, ga, gb, "
             "wr, zero_):")
    for n in range(N + (2 if K else 0)):
        S.add(1, f"A{n} = A[{n}]")
    Wc = S.c(W)
    S.add(1, "for g in range(g0, g1):")
    S.add(2, "gv = gvs[g]")
    S.add(2, "r0 = bounds[g]")
    S.add(2, "hi = bounds[g + 1]")
    S.add(2, "while r0 < hi:")
    S.add(3, f"w = min({Wc}, hi - r0)")
    S.add(3, f"gather_tile(X, r0, w, xn, {S.c(Q)}, {Wc}, A0)")
    if K:  # the step's factors in steps, their last output into A<K>
        _emit_steps(S, 3, shapes, offs, CF, spans, W)
    if not T0:
        for n in range(K, N - 1):
            S.add(3, f"fw{n}(V[{offs[n]}:{offs[n + 1]}], A{n}, A{n + 1}, wr)")
    S.add(3, f"gather_tile(G, r0, w, gm, {S.c(P)}, {Wc}, ga)")
    cur, other = "ga", "gb"
    if T0:  # the factors after the step by residue groups, their gradient into gb
        S.add(3, f"for g_ in range({S.c(T0 // c)}):")
        S.add(4, f"k0_ = {S.mul('g_', c)}")
        for n in range(K, N - 1):
            S.add(4, f"fw{n}(V[{offs[n]}:{offs[n + 1]}], A{n}, A{n + 1}, wr, k0_)")
        g, local = "ga", [f"A{N}", f"A{N + 1}"]
        for n in reversed(range(K, N)):
            S.add(4, f"vg{n}(gv[{offs[n]}:{offs[n + 1]}], {g}, A{n}, wr, zero_, k0_)")
            dst = "gb" if n == K else local[0]
            S.add(4, f"tr{n}(VT[{offs[n]}:{offs[n + 1]}], {g}, {dst}, wr, k0_)")
            g = dst
            local.reverse()
        cur, other = "gb", "ga"
    else:  # the factors after the step on the whole tile
        for n in reversed(range(K, N)):
            S.add(3, f"vg{n}(gv[{offs[n]}:{offs[n + 1]}], {cur}, A{n}, wr, zero_)")
            call = f"tr{n}(VT[{offs[n]}:{offs[n + 1]}], {cur}, {other}, wr)"
            if n > 0:
                S.add(3, call)
                cur, other = other, cur
            else:
                S.add(3, "if need_x:")
                S.add(4, call)
                S.add(4, f"scatter_tile({other}, r0, w, xn, {Wc}, GX)")
    if K:  # the gradients of the step's factors in steps, from the gradient of A<K>
        _emit_steps(S, 3, shapes, offs, CF, spans, W, (cur, other))
        S.add(3, "if need_x:")
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
        "from debutla.backends._numba_simd import add_dots, panel_mac, wide_vectors",
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
