"""Source generation for the Numba backend: one kernel module per chain and tile width.

Every size of the chain (``nb, r, s, t`` of each factor, the tile width ``W``) is baked
into the generated source as a ``numpy.uint64`` constant, so LLVM sees fixed trip counts
and nonnegative index arithmetic (no wrap-around checks on negative indices), unrolls
the tiny ``j`` sums and vectorises the innermost loop.

The source is written to a ``.py`` file in the checked kernel cache folder (its name is
a hash of the source) and executed from there (:mod:`debutla.backends._cache`), so
``numba.njit(cache=True)`` can store the compiled machine code next to it and a second
process loads it instead of compiling.  A file that holds the right text is never
rewritten (Numba's cache index is keyed on the file's modification time).

Generated functions (all ``nogil``, ``cache=True``, compiled lazily per dtype).  ``V`` is
every factor's values packed into one flat array, in application order (factor ``i``
is ``V[o_i:o_{i+1}]``, ``o`` the running sums of the value counts, sliced inside the
kernel): one array argument instead of one per factor, because the dispatcher's cost
per argument is a visible part of a matvec.

``chain_buf(V, ba, bb, wr)``
    Apply the whole chain to a ``W``-wide panel held features-major in ``ba``
    (``ba[f * W + c]`` is feature ``f`` of panel column ``c``) in passes
    (:func:`panel_passes`): a pair of nesting factors whose pass maps as many inputs as
    outputs (two ``(2,2,t)``, ``(2,2,2t)`` factors: a radix-4 step; or ``(2,2,2t)``,
    ``(2,2,t)`` in a transposed chain, :func:`_nests_back`) runs as one in-place
    pass with the middle values in registers, and so does a single radix-4 ``(4,4,t)``
    factor; those passes loop over a constant ``W`` columns in full tiles.  Other
    factors ping-pong between ``ba`` and ``bb``.  The result lies in ``ba`` or ``bb``
    (module constant ``RESULT_IN_A``).
``rows_tiles(V, X, out, k, t0, t1, ba, bb, wr, xn)``
    ``out = X @ D.T`` for the tiles ``t0 .. t1-1`` of ``W`` rows of the flat row-major
    ``X`` (``k x xn``, ``xn <= Q``: missing features are zeros, no padded copy) and
    ``out`` (``k x P``): gather a tile transposed, ``chain_buf``, scatter it back.
    Where the first pass starts with a ``t = 1`` factor (:func:`step_plan`), a full tile
    gathers its features in steps and runs the first passes on each step while it is in
    L1 (``step_blocks(V, ba, bb, wr, flo, fhi)``: their blocks that read input features
    ``flo .. fhi-1``), then the other passes (``chain_rest``); ``chain_buf`` is then
    those two over every feature, so each pass is compiled once.
``cols_tiles(V, X, out, k, t0, t1, ba, bb, wr, xn)``
    ``out = D @ X`` for the tiles of ``W`` columns of the flat row-major ``X``
    (``xn x k``) and ``out`` (``P x k``).
``rows_single(V, X, out, r0, r1, ba, bb, one)``
    ``out = X @ D.T`` one row at a time (rows ``r0 .. r1-1``), vectorising over the
    diagonal index ``t``: the batch-1 (matvec) kernel.

The tile kernels first call :func:`debutla.backends._numba_stack.place_stack`, so the
frame of ``chain_buf``, with its register spill slots, sits at one position within a
page whatever Python call depth or thread the call comes from (``_PLACE_STACK``;
``benchmarks/README_kernels.md``, change 8).  ``rows_single`` does not: a wrapper that
places the stack before calling the matvec body measured 2-3% slower at batch 1 (its
array arguments are copied into the call) and no steadier.
"""

from __future__ import annotations

from typing import NamedTuple

import itertools
import math

from . import _cache

GENERATOR_VERSION = "14"
_OPAQUE_T = 4  # per-row kernels: inner loops over t >= this get an opaque trip count
_GROUP_MAX = 4  # outputs per register-blocked group in the panel kernels
_GROUPS = (4, 3, 2, 1)  # outputs per group: the first that divides r (README_kernels, change 9)
_CHUNK = 4  # terms of the j-sum written out per statement
_WIDE_MIN = 64  # r * s from which a t = 1 factor gets the wide panel micro-kernel
_WIDE_CHUNK = 5  # at most this many terms per statement there
# fused panel passes (several nesting factors per sweep of the tile; measured choices,
# see benchmarks/README_kernels.md): pairs, not triples (a (2,2) triple holds 48
# coefficients and spills: slower than pairs); only passes that can run in place
# (as many outputs as inputs: the non-square VGG pairs ran 1.3x slower fused)
_FUSE_MAX = 2  # most factors fused into one panel pass (1: no fusion, the old kernels)
_FUSE_REVERSE = True  # fuse factors that nest the other way round too (change 36)
_FUSE_RS = 8  # factors with r * s up to this can be fused
_FUSE_VALUES = 16  # most values alive at once in a fused pass (per column)
_FUSE_COEFS = 48  # most coefficients of a fused pass per (block, k)
_FUSE_SQUARE_ONLY = False  # True: fuse only groups that can run in place (before change 23)
_FUSE_NONSQUARE_W = 16  # the other groups from this tile width (32 before change 30)
_FUSE_NONSQUARE_COEFS = 32  # ... with at most this many coefficients (48: slower)
_CONST_W = True  # in-place passes: full tiles loop over a constant W columns
_CONST_W_MIN = 16  # ... from this tile width (below it LLVM unrolls and scalarises)
_INPLACE_SINGLE = False  # single square factors stay ping-pong (not measured faster)
_SINGLE_GROUP_MIN = 16  # square single factors with r s in this range run as in-place
_SINGLE_GROUP_MAX = 16  # ... group passes: the radix-4 (4,4,t) factors
_VEC_PANEL = True  # single-factor panel steps of full tiles in vector code (panel_mac)
_VEC_PANEL_WIDE = True  # ... the wide t = 1 micro-kernel's too
_VEC_PANEL_BYTES = 64  # ... for steps of at most this many bytes per feature (wr rows)
_VEC_GROUP = True  # fused passes' steps too (group_mac), where the loop runs over wr

class _Src:
    """Accumulates source lines and the uint64 constants they use."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: set[int] = set()

    def c(self, n: int) -> str:
        self.consts.add(int(n))
        return f"_u{int(n)}"

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    # small expression helpers that fold the trivial cases
    def mul(self, a: str, n: int) -> str:
        if n == 0 or a == "_u0":
            return self.c(0)
        if n == 1:
            return a
        if "+" in a:
            a = f"({a})"
        return f"{a} * {self.c(n)}"

    def plus(self, a: str, b: str) -> str:
        if a == "_u0":
            return b
        if b == "_u0":
            return a
        return f"{a} + {b}"

    def loop(self, indent: int, var: str, n: int) -> int:
        """Open ``for var in range(n)`` (or bind ``var = 0`` when ``n == 1``)."""
        if n == 1:
            self.add(indent, f"{var} = {self.c(0)}")
            return indent
        self.add(indent, f"for {var} in range({self.c(n)}):")
        return indent + 1


def _sum_terms(terms: list[str]) -> str:
    return " + ".join(terms)


def _emit_jsum(S: _Src, ind: int, s: int, chunk, C: int = _CHUNK) -> None:
    """Emit the sum over ``j < s`` as statements of at most ``C`` (+1) terms.

    ``chunk(j0, n, first, jvar, ind)`` emits one statement for ``j = j0 .. j0+n-1``
    (offset by ``jvar * C`` when ``jvar`` names a loop variable); the first one
    assigns, the others accumulate.
    """
    if s <= C + 1:
        chunk(0, s, True, None, ind)
        return
    chunk(0, C, True, None, ind)
    nfull = s // C  # chunks 1 .. nfull-1 are full
    if nfull > 1:
        S.add(ind, f"for jc_ in range({S.c(1)}, {S.c(nfull)}):")
        chunk(0, C, False, "jc_", ind + 1)
    rem = s - nfull * C
    if rem:
        chunk(nfull * C, rem, False, None, ind)


def _wide_t1(spec) -> bool:
    """Whether a factor gets the wide ``t = 1`` panel micro-kernel (``r * s >= 64``)."""
    nb, r, s, t = spec
    return t == 1 and r * s >= _WIDE_MIN


def _panel_blocking(spec) -> tuple:
    """``(G, C)`` of a factor's panel kernel: outputs per group, terms per statement.

    Wide ``t = 1`` factors split the ``j`` sum into equal passes of at most
    ``_WIDE_CHUNK`` terms (``s = 9``: 5 + 4, not 4 + 4 + 1: every extra pass over the
    tile loads and stores the ``G`` outputs again).
    """
    nb, r, s, t = spec
    C = _CHUNK
    if _wide_t1(spec):
        passes = -(-s // _WIDE_CHUNK)
        C = -(-s // passes)
    G = next(g for g in _GROUPS if r % g == 0 and g <= _GROUP_MAX)
    return G, C


class Residues(NamedTuple):
    """The features of a residue group: ``k mod T0`` in ``k0 .. k0 + c - 1``.

    A factor whose ``t`` is a multiple of ``T0`` maps each residue class of ``k mod T0``
    onto itself, so a group of classes is a problem of its own.  A side (input or
    output) that is ``local`` holds only the group's features, packed: feature
    ``h t + k`` (``k = m T0 + k0 + d``) at ``h (t / T0) c + m c + d``; the other side
    is the whole array.  The values are always indexed by the whole ``k``.
    """

    T0: int
    c: int
    k0: str  # an expression: the group's first residue
    in_local: bool
    out_local: bool


def _block_loop(S: _Src, ind: int, b: str, nb: int, blocks: tuple[str, str] | None) -> int:
    """Open the loop over a factor's blocks ``b``: all ``nb``, or ``blocks`` (two
    expressions bounding them).  Returns the body's indent.
    """
    if blocks is None:
        return S.loop(ind, b, nb)
    S.add(ind, f"for {b} in range({blocks[0]}, {blocks[1]}):")
    return ind + 1


def _k_loop(S: _Src, ind: int, k: str, t: int, tag: str, res: Residues | None
            ) -> tuple[int, str, str, int, int]:
    """Open the loop over the diagonal index ``k < t`` of a factor's blocks (only the
    group's with ``res``): ``(indent, k of the input side, k of the output side,
    t of the input side, t of the output side)``; the values' ``k`` is bound to ``k``.
    """
    if res is None:
        return S.loop(ind, k, t), k, k, t, t
    u = t // res.T0
    m, d = f"m{tag}", f"d{tag}"
    ind = S.loop(S.loop(ind, m, u), d, res.c)
    S.add(ind, f"{k} = {S.plus(S.plus(res.k0, S.mul(m, res.T0)), d)}")
    kl = f"kl{tag}"
    S.add(ind, f"{kl} = {S.plus(S.mul(m, res.c), d)}")
    return (ind, kl if res.in_local else k, kl if res.out_local else k,
            u * res.c if res.in_local else t, u * res.c if res.out_local else t)


def _vec_rows(rows: int) -> bool:
    """Whether a pass's steps of ``wr == rows`` columns may run in vector code
    (:func:`debutla.backends._numba_simd.panel_mac`, ``group_mac``): only where ``rows``
    float32 values fit ``_VEC_PANEL_BYTES`` (one 64-byte vector; the intrinsics decline
    wider dtypes at compile time).  Over more rows the loop runs several vector
    iterations a step, and there the vector step was no faster (LeNet's 64-row float32
    tiles 0.94-0.96x; ``benchmarks/README_kernels.md``, change 28).
    """
    return 4 * rows <= _VEC_PANEL_BYTES


def _vec_branch(S: _Src, ind: int, rows: int, call: str) -> int:
    """Open ``if wr == rows and call: pass`` / ``else:`` (the intrinsic ``call`` returns
    whether it ran the step); the indent of the ``else`` body, where the loop goes.
    """
    S.add(ind, f"if wr == {S.c(rows)} and {call}:")
    S.add(ind + 1, "pass")
    S.add(ind, "else:")
    return ind + 1


def _emit_factor_panel(S: _Src, ind: int, spec, vname: str, src: str, dst: str, W: int,
                       tag: str, blocks: tuple[str, str] | None = None,
                       res: Residues | None = None, rows: int | None = None) -> None:
    """One factor on a features-major panel of width ``W``: ``dst <- R src``.

    Outputs are computed in groups of ``G`` rows ``i`` of a block (4, 3, 2 or 1: the
    first that divides ``r``), so each input panel row loaded in the inner loop serves
    ``G`` outputs (a register-blocked micro GEMM ``(G x s) @ (s x W)``).  ``blocks``:
    two expressions bounding the blocks computed (default all ``nb``); ``res``: only the
    features of a residue group (:class:`Residues`); ``rows``: the ``wr`` of the calls
    that get the vector-code step (default ``W``; 16 in the steps of 16-row parts).
    """
    nb, r, s, t = spec
    rows = rows or W
    G, C = _panel_blocking(spec)
    # wide t = 1 factors name their values inside the column loop's statements instead
    # of loading them into locals before it (LLVM hoists the broadcasts either way, but
    # schedules this form better: 1.3-1.4x faster there, and no faster elsewhere)
    inline = _wide_t1(spec)
    b, i, k = f"b{tag}", f"i{tag}", f"k{tag}"
    ind1 = _block_loop(S, ind, b, nb, blocks)
    ind2 = S.loop(ind1, i, r // G)
    ind3, k_in, k_out, t_in, t_out = _k_loop(S, ind2, k, t, tag, res)
    # output feature ((b r + i) t + k); V index of j: ((b r + i) s + j) t + k;
    # input feature (b s + j) t + k; here i = G * i_group + g (a local side of a
    # residue group: its own t and k, see Residues)
    bri = S.plus(S.mul(b, r), S.mul(i, G))
    S.add(ind3, f"o_ = {S.mul(S.plus(S.mul(bri, t_out), k_out), W)}")
    S.add(ind3, f"v_ = {S.plus(S.mul(S.mul(bri, s), t), k)}")
    S.add(ind3, f"x_ = {S.mul(S.plus(S.mul(S.mul(b, s), t_in), k_in), W)}")
    jstride_v, jstride_x = t, t_in * W
    gstride_o, gstride_v = t_out * W, s * t

    def chunk(j0: int, n: int, first: bool, jvar: str | None, ind_: int) -> None:
        # j = j0 (+ jvar * C) + 0..n-1
        if jvar is not None:
            S.add(ind_, f"xj_ = x_ + {jvar} * {S.c(C * jstride_x)}")
            xb, vb = "xj_", f"v_ + {jvar} * {S.c(C * jstride_v)}"
        else:
            xb, vb = "x_", "v_"
        if _VEC_PANEL and (not inline or _VEC_PANEL_WIDE) and _vec_rows(rows):
            # a full tile: the step in vector code, with the loop's bits (real dtypes
            # within the byte limit; for the others panel_mac returns False and the
            # loop below runs)
            ind_ = _vec_branch(S, ind_, rows, (
                f"panel_mac({dst}, o_, {S.c(gstride_o)}, {src}, "
                f"{S.plus(xb, S.c(j0 * jstride_x))}, {S.c(jstride_x)}, {vname}, "
                f"{S.plus(vb, S.c(j0 * jstride_v))}, {S.c(gstride_v)}, {S.c(jstride_v)}, "
                f"{G}, {n}, {rows}, {0 if first else 1}, {_VEC_PANEL_BYTES})"))
        wexpr = {}
        for g in range(G):
            for jj in range(n):
                vidx = f"{vb} + {S.c(g * gstride_v + (j0 + jj) * jstride_v)}"
                if inline:
                    wexpr[g, jj] = f"{vname}[{vidx}]"
                else:
                    S.add(ind_, f"w{g}_{jj} = {vname}[{vidx}]")
        S.add(ind_, "for c_ in range(wr):")
        ind4 = ind_ + 1
        for jj in range(n):
            S.add(ind4, f"z{jj} = {src}[{xb} + {S.c((j0 + jj) * jstride_x)} + c_]")
        op = "=" if first else "+="
        for g in range(G):
            terms = [f"{wexpr.get((g, jj), f'w{g}_{jj}')} * z{jj}" for jj in range(n)]
            S.add(ind4, f"{dst}[o_ + {S.c(g * gstride_o)} + c_] {op} {_sum_terms(terms)}")

    _emit_jsum(S, ind3, s, chunk, C)


def _nests(a, b) -> bool:
    """Whether factor ``b`` applied after ``a`` works inside ``a``'s blocks.

    True when ``t_b = r_a t_a`` and ``nb_a = nb_b s_b``: then, for each block ``B`` of
    ``b`` and each ``k < t_a``, the ``s_a s_b`` inputs of ``a`` at features
    ``(B s_b s_a + j) t_a + k`` produce the ``r_b r_a`` outputs of ``b`` at
    ``(B r_b r_a + i) t_a + k`` without touching any other feature (an FFT-style radix
    pass), so the two factors can run in one pass with the middle values in registers.
    """
    nba, ra, sa, ta = a
    nbb, rb, sb, tb = b
    return tb == ra * ta and nba == nbb * sb


def _nests_back(a, b) -> bool:
    """Whether factor ``b`` applied after ``a`` works inside ``a``'s blocks the other way
    round: ``t_a = s_b t_b`` and ``nb_b = nb_a r_a`` (a transposed chain's consecutive
    factors, whose ``t`` shrink).

    Then, for each block ``B`` of ``a`` and each ``k < t_b``, the ``s_a s_b`` inputs of
    ``a`` at features ``(B s_a s_b + j) t_b + k`` produce the ``r_a r_b`` outputs of
    ``b`` at ``(B r_a r_b + i) t_b + k``: the mirror of :func:`_nests`, with the digits
    of the earlier factors high and those of the later ones low.
    """
    nba, ra, sa, ta = a
    nbb, rb, sb, tb = b
    return ta == sb * tb and nbb == nba * ra


def _backward_group(specs) -> bool:
    """Whether a fused group's factors nest the other way round (:func:`_nests_back`)."""
    return len(specs) > 1 and not _nests(specs[0], specs[1])


def _group_grid(specs) -> tuple[int, int]:
    """``(blocks, t)`` of a fused group's ``(B, k)`` loop: the last factor's blocks and
    the first factor's ``t``; the first's blocks and the last's ``t`` for factors
    nesting the other way round.
    """
    if _backward_group(specs):
        return specs[0][0], specs[-1][3]
    return specs[-1][0], specs[0][3]


def _pass_grid(shapes, passes) -> list[int]:
    """The blocks that each panel pass of ``passes`` loops over (:func:`_group_grid`)."""
    return [_group_grid(shapes[n0:n0 + cnt])[0] for n0, cnt in passes]


def _fusable(spec) -> bool:
    nb, r, s, t = spec
    return r * s <= _FUSE_RS and not _wide_t1(spec)


def _group_cost(specs) -> tuple:
    """``(values, coefficients)`` of a fused group.

    The most values alive at once, and the number of coefficients per ``(block, k)``.
    """
    width = 1
    for nb, r, s, t in specs:
        width *= s
    most, coefs = width, 0
    for nb, r, s, t in specs:
        width = width // s * r
        coefs += width * s
        most = max(most, width)
    return most, coefs


def _fuses(group, W: int | None) -> bool:
    """Whether the nesting factors ``group`` run as one panel pass at tile width ``W``.

    Groups that can run in place (as many outputs as inputs) fuse within the limits
    on values and coefficients; the others from tiles of ``_FUSE_NONSQUARE_W`` rows and
    at most ``_FUSE_NONSQUARE_COEFS`` coefficients (``README_kernels.md``, changes 23
    and 30: 16 rows since their steps there are vector code, change 29).
    """
    most, coefs = _group_cost(group)
    if most > _FUSE_VALUES or coefs > _FUSE_COEFS:
        return False
    if _in_place(group):
        return True
    return (not _FUSE_SQUARE_ONLY and W is not None and W >= _FUSE_NONSQUARE_W
            and coefs <= _FUSE_NONSQUARE_COEFS)


def panel_passes(shapes, W: int | None = None) -> list:
    """Split a chain into panel passes: runs of nesting small factors fused (greedy).

    Returns a list of ``(first, count)``; a pass of ``count > 1`` factors computes
    them together, keeping the intermediate values in registers (see :func:`_nests`).
    ``W``: the tile width (None: only the groups that fuse at any width).
    """
    out, n, N = [], 0, len(shapes)
    while n < N:
        m = 1
        if _fusable(shapes[n]):
            # every pair of a group nests one way (the first pair's)
            way = _nests
            if (n + 1 < N and _FUSE_REVERSE and not _nests(shapes[n], shapes[n + 1])
                    and _nests_back(shapes[n], shapes[n + 1])):
                way = _nests_back
            while (n + m < N and m < _FUSE_MAX and _fusable(shapes[n + m])
                   and way(shapes[n + m - 1], shapes[n + m])
                   and _fuses(shapes[n:n + m + 1], W)):
                m += 1
        out.append((n, m))
        n += m
    return out


def _stage_digits(specs, f_: int) -> tuple:
    """``(prod s after stage f_, prod r before it)`` in a fused group.

    How many high input digits and low output digits index the values around stage f_.
    """
    nhi = nlo = 1
    for nb, r, s, t in specs[f_ + 1:]:
        nhi *= s
    for nb, r, s, t in specs[:f_]:
        nlo *= r
    return nhi, nlo


def _emit_group_panel(S: _Src, ind: int, specs, vnames, src: str, dst: str, W: int,
                      tag: str, inplace: bool = False,
                      blocks: tuple[str, str] | None = None,
                      rows: int | None = None) -> None:
    """Nesting factors ``specs`` (application order) in one pass over a panel.

    For each block ``B`` of the last factor and each ``k < t_1``, the ``prod s``
    input rows are loaded once per column, every factor is applied in registers and the
    ``prod r`` output rows are stored once: one read and one write of the panel instead
    of one per factor.  ``blocks``: two expressions bounding the blocks ``B`` computed
    (default all); ``rows``: as in :func:`_emit_factor_panel`.
    """
    rows = rows or W
    back = _backward_group(specs)
    nbm, t1 = _group_grid(specs)
    rs = [sp[1] for sp in specs]
    ss = [sp[2] for sp in specs]
    prod_s, prod_r = 1, 1
    for r, s in zip(rs, ss):
        prod_s *= s
        prod_r *= r
    B, k = f"B{tag}", f"k{tag}"
    ind1 = _block_loop(S, ind, B, nbm, blocks)
    ind2 = S.loop(ind1, k, t1)
    S.add(ind2, f"x_ = {S.mul(S.plus(S.mul(B, prod_s * t1), k), W)}")
    S.add(ind2, f"o_ = {S.mul(S.plus(S.mul(B, prod_r * t1), k), W)}")
    # coefficient bases: V_l[B (S_above r_l s_l t_l) + k + const]; the other way
    # round V_l[B (R_below r_l s_l t_l) + k + const]
    for f_, (nb, r, s, t) in enumerate(specs):
        nhi, nlo = _stage_digits(specs, f_)
        S.add(ind2, f"v{f_}_ = {S.plus(S.mul(B, (nlo if back else nhi) * r * s * t), k)}")

    # coefficients, loaded before the column loop: factor f_'s value for block row i,
    # column j at (high input digits jh, low output digits il) sits at
    # v_l + jh r s t + (i s + j) t + il t_1; the other way round (earlier factors'
    # output digits il high, later factors' input digits jh low) at
    # v_l + il r s t + (i s + j) t + jh t_last
    coef = {}
    for f_, (nb, r, s, t) in enumerate(specs):
        nhi, nlo = _stage_digits(specs, f_)
        for jh in range(nhi):
            for il in range(nlo):
                for i in range(r):
                    for j in range(s):
                        name = f"w{f_}_{jh}_{il}_{i}_{j}"
                        coef[f_, jh, il, i, j] = name
                        if back:
                            off = il * r * s * t + (i * s + j) * t + jh * t1
                        else:
                            off = jh * r * s * t + (i * s + j) * t + il * t1
                        S.add(ind2, f"{name} = {vnames[f_]}[v{f_}_ + {S.c(off)}]")
    # in place (outputs over inputs), a full tile runs a column loop of constant trip
    # count W: LLVM then emits straight vector code with no alias checks or remainder
    # loop (1.5x faster on the butterfly); a partial tile runs the same body over wr.
    # Below W = 16 LLVM unrolls the constant loop fully before vectorising it and the
    # pass runs scalar (the float64 butterfly, W = 8: 3x slower), so wr is used there
    const = inplace and _CONST_W and W >= _CONST_W_MIN
    if const:
        S.add(ind2, f"if wr == {S.c(W)}:")
        _group_body(S, ind2 + 1, specs, coef, src, dst, W, S.c(W))
        S.add(ind2, "else:")
        ind2 += 1
    if _VEC_GROUP and _vec_rows(rows) and not (const and rows == W):
        # the step of wr == rows columns in vector code, with the loop's bits (real
        # dtypes; group_mac returns False for the others and the loop runs)
        prog, names = _group_program(specs, coef)
        ind2 = _vec_branch(S, ind2, rows, (
            f"group_mac({dst}, o_, {S.c(t1 * W)}, {src}, x_, {S.c(t1 * W)}, "
            f"({', '.join(names)},), \"{prog}\", {rows}, {_VEC_PANEL_BYTES})"))
    _group_body(S, ind2, specs, coef, src, dst, W, "wr")


def _group_statements(specs) -> list:
    """The straight-line body of a fused group's column step, in order:
    ``[(target, [(coefficient key, source), ...]), ...]``; a source or target is
    ``(f, idx)``, the value ``idx`` after ``f`` factors (``f = 0``: the input rows), and
    the last factor's targets are the output rows ``(len(specs), idx)``; a coefficient
    key is ``(f, jh, il, i, j)`` as :func:`_emit_group_panel` names them.  A value's
    index holds the later factors' input digits ``jh`` high and the earlier factors'
    output digits ``il`` low, or the other way round for factors nesting that way
    (:func:`_nests_back`).
    """
    back = _backward_group(specs)
    out = []
    for f_, (nb, r, s, t) in enumerate(specs):
        nhi, nlo = _stage_digits(specs, f_)
        if back:  # statements in the order (il, i, jh)
            keys = [(jh, il, i) for il, i, jh in
                    itertools.product(range(nlo), range(r), range(nhi))]
        else:  # (jh, i, il)
            keys = [(jh, il, i) for jh, i, il in
                    itertools.product(range(nhi), range(r), range(nlo))]
        for jh, il, i in keys:
            terms = [((f_, jh, il, i, j), (f_, _digits_index(back, jh, il, j, s, nhi, nlo)))
                     for j in range(s)]
            out.append(((f_ + 1, _digits_index(back, jh, il, i, r, nhi, nlo)), terms))
    return out


def _digits_index(back: bool, jh: int, il: int, x: int, n: int, nhi: int, nlo: int) -> int:
    """The index of a fused group's value with the later factors' input digits ``jh``,
    the earlier factors' output digits ``il`` and the stage's own digit ``x`` (of
    ``n``): ``jh`` high and ``il`` low, or the other way round (``back``).
    """
    return (il * n + x) * nhi + jh if back else (jh * n + x) * nlo + il


def _group_program(specs, coef: dict) -> tuple[str, list[str]]:
    """``(PROG, coefficient names)``: the group's column step as the program of
    :func:`debutla.backends._numba_simd.group_mac` (inputs ``iN``, middle values
    ``mF_N``, outputs ``oN``), and the coefficients its indices refer to.
    """
    m = len(specs)
    names: list[str] = []
    index: dict = {}

    def var(f: int, idx: int) -> str:
        return f"i{idx}" if f == 0 else (f"o{idx}" if f == m else f"m{f}_{idx}")

    stmts = []
    for (f, idx), terms in _group_statements(specs):
        parts = []
        for key, (fs, js) in terms:
            if key not in index:
                index[key] = len(names)
                names.append(coef[key])
            parts.append(f"{index[key]}*{var(fs, js)}")
        stmts.append(f"{var(f, idx)}=" + ",".join(parts))
    return ";".join(stmts), names


def _group_body(S: _Src, ind: int, specs, coef: dict, src: str, dst: str, W: int,
                trip: str) -> None:
    """The column loop of :func:`_emit_group_panel`."""
    m = len(specs)
    t1 = _group_grid(specs)[1]
    prod_s = 1
    for sp in specs:
        prod_s *= sp[2]
    S.add(ind, f"for c_ in range({trip}):")
    ind3 = ind + 1
    for idx in range(prod_s):
        S.add(ind3, f"y0_{idx} = {src}[x_ + {S.c(idx * t1 * W)} + c_]")
    for (f, idx), terms in _group_statements(specs):
        rhs = _sum_terms([f"{coef[key]} * y{fs}_{js}" for key, (fs, js) in terms])
        if f == m:
            S.add(ind3, f"{dst}[o_ + {S.c(idx * t1 * W)} + c_] = {rhs}")
        else:
            S.add(ind3, f"y{f}_{idx} = {rhs}")


_BUFS = ("ba", "bb")  # the tile kernels' two features-major scratch blocks


def _pass_in_place(shapes, n0: int, cnt: int) -> bool:
    """Whether the panel pass of ``shapes[n0:n0 + cnt]`` writes over its input buffer."""
    return (cnt == 1 and _single_as_group(shapes[n0])) or _in_place(shapes[n0:n0 + cnt])


def _emit_pass(S: _Src, shapes, n0: int, cnt: int, cur: int, W: int,
               blocks: tuple[str, str] | None = None, rows: int | None = None) -> int:
    """Emit the panel pass of ``shapes[n0:n0 + cnt]`` on the current values in buffer
    ``cur`` (0: ``ba``, 1: ``bb``), over ``blocks`` (default all), the vector-code steps
    for ``wr == rows`` (default ``W``); the buffer of its result.
    """
    bufs = _BUFS
    inplace = _pass_in_place(shapes, n0, cnt)
    src, dst = bufs[cur], bufs[cur if inplace else 1 - cur]
    if cnt == 1 and not _single_as_group(shapes[n0]):
        _emit_factor_panel(S, 1, shapes[n0], f"V{n0}", src, dst, W, str(n0), blocks,
                           rows=rows)
    else:
        _emit_group_panel(S, 1, shapes[n0:n0 + cnt], [f"V{n}" for n in range(n0, n0 + cnt)],
                          src, dst, W, str(n0), inplace, blocks, rows)
    return cur if inplace else 1 - cur


def _single_as_group(spec) -> bool:
    """Whether one square factor runs as an in-place group pass (radix-4 ``(4,4,t)``).

    Its ``s`` input rows are all loaded before its ``r`` output rows are stored, so it
    can run in place with the constant-width column loop of the fused passes.
    """
    nb, r, s, t = spec
    return r == s and _SINGLE_GROUP_MIN <= r * s <= _SINGLE_GROUP_MAX and not _wide_t1(spec)


def _in_place(specs) -> bool:
    """Whether a panel pass may write its outputs over its inputs.

    True when it reads every input row of a ``(block, k)`` group before it writes any
    output row, and the outputs land on the same rows: a fused group with as many
    outputs as inputs, or one square factor computed in a single group (``G = r = s``).
    """
    if len(specs) > 1:
        ins = outs = 1
        for nb, r, s, t in specs:
            ins *= s
            outs *= r
        return ins == outs
    if not _INPLACE_SINGLE:
        return False
    nb, r, s, t = specs[0]
    G, C = _panel_blocking(specs[0])
    return r == s and G == r and s <= C + 1 and not _wide_t1(specs[0])


def vec_transposed(spec) -> bool:
    """Whether the per-row kernel wants this factor's values as ``(nb, s, r)``.

    For ``t = 1`` and ``r >= 4`` the per-row kernel vectorises over the ``r`` outputs of
    a block instead of summing ``s`` scalar products per output.
    """
    nb, r, s, t = spec
    return t == 1 and r >= 4


def _emit_factor_vec(S: _Src, ind: int, spec, vname: str, src: str, sbase: str, dst: str,
                     dbase: str, tag: str) -> None:
    """One factor on a single vector (features contiguous): ``dst <- R src``."""
    nb, r, s, t = spec
    b, i = f"b{tag}", f"i{tag}"
    ind1 = S.loop(ind, b, nb)
    if vec_transposed(spec):
        # values stored as (nb, s, r): y[b, :] = sum_j U[b, j, :] x[b, j], vector over i
        S.add(ind1, f"x_ = {S.plus(sbase, S.mul(b, s))}")
        S.add(ind1, f"o_ = {S.plus(dbase, S.mul(b, r))}")
        S.add(ind1, f"v_ = {S.mul(b, s * r)}")
        for j0 in range(0, s, _CHUNK):
            n = min(_CHUNK, s - j0)
            for jj in range(n):
                S.add(ind1, f"z{jj} = {src}[x_ + {S.c(j0 + jj)}]")
            S.add(ind1, f"for c_ in range({S.c(r)} * one):")
            ind4 = ind1 + 1
            terms = [f"{vname}[v_ + {S.c((j0 + jj) * r)} + c_] * z{jj}" for jj in range(n)]
            op = "=" if j0 == 0 else "+="
            S.add(ind4, f"{dst}[o_ + c_] {op} {_sum_terms(terms)}")
        return
    if t == 1:
        S.add(ind1, f"x_ = {S.plus(sbase, S.mul(b, s))}")
        ind2 = S.loop(ind1, i, r)
        bri = S.plus(S.mul(b, r), i)
        S.add(ind2, f"v_ = {S.mul(bri, s)}")
        if s <= 2 * _CHUNK:
            terms = [f"{vname}[v_ + {S.c(j)}] * {src}[x_ + {S.c(j)}]" for j in range(s)]
            S.add(ind2, f"{dst}[{S.plus(dbase, bri)}] = {_sum_terms(terms)}")
        else:
            S.add(ind2, f"a_ = {vname}[v_] * {src}[x_]")
            S.add(ind2, f"for j_ in range({S.c(1)}, {S.c(s)}):")
            S.add(ind2 + 1, f"a_ += {vname}[v_ + j_] * {src}[x_ + j_]")
            S.add(ind2, f"{dst}[{S.plus(dbase, bri)}] = a_")
        return
    ind2 = S.loop(ind1, i, r)
    bri = S.plus(S.mul(b, r), i)
    S.add(ind2, f"o_ = {S.plus(dbase, S.mul(bri, t))}")
    S.add(ind2, f"v_ = {S.mul(S.mul(bri, s), t)}")
    S.add(ind2, f"x_ = {S.plus(sbase, S.mul(S.mul(b, s), t))}")

    def chunk(j0: int, n: int, first: bool, jvar: str | None, ind_: int) -> None:
        if jvar is not None:
            S.add(ind_, f"vj_ = v_ + {jvar} * {S.c(_CHUNK * t)}")
            S.add(ind_, f"xj_ = x_ + {jvar} * {S.c(_CHUNK * t)}")
            vb, xb = "vj_", "xj_"
        else:
            vb, xb = "v_", "x_"
        if t >= _OPAQUE_T:  # a trip count LLVM cannot see, so it vectorises this loop
            S.add(ind_, f"for c_ in range({S.c(t)} * one):")
            ind4 = ind_ + 1
        else:
            ind4 = S.loop(ind_, "c_", t)
        terms = [f"{vname}[{vb} + {S.c((j0 + jj) * t)} + c_] * "
                 f"{src}[{xb} + {S.c((j0 + jj) * t)} + c_]" for jj in range(n)]
        op = "=" if first else "+="
        S.add(ind4, f"{dst}[o_ + c_] {op} {_sum_terms(terms)}")

    _emit_jsum(S, ind2, s, chunk)


_TB = 4  # block of the scalar tile transposes (Numba compiles without the SLP vectoriser)
_SIMD_TRANSPOSE = True  # full 8 x 8 blocks through _numba_simd.transpose8 (vector shuffles)
_PLACE_STACK = True  # the tile kernels call _numba_stack.place_stack first
_SIMD_BLOCK = 8
_GATHER_FEATURES_OUTER = True  # the row gather's 8 x 8 blocks: features outer (change 11)


def _gather8_lines(S: _Src, L: int, W: int, flo: str, fhi: str, rows: str,
                   first: str | None = None) -> list[str]:
    """Lines gathering features ``flo .. fhi-1`` (multiples of 8) of the tile's rows
    ``first .. rows-1`` (default from 0; multiples of 8) of ``X`` (``L`` features a row)
    into the features-major ``ba``, in ``8 x 8`` vector transposes, features outer.
    """
    V, Lc, Wc = _SIMD_BLOCK, S.c(L), S.c(W)
    return [f"for fb in range({flo}, {fhi}, {S.c(V)}):",
            f"    for cb in range({first or S.c(0)}, {rows}, {S.c(V)}):",
            f"        transpose8(X, (c0 + cb) * {Lc} + fb, {Lc}, ba, fb * {Wc} + cb, {Wc})"]


def _transpose_lines(S: _Src, kind: str, L: int, W: int, fin: str) -> list[str]:
    """Lines moving a tile of ``w`` rows between row-major and features-major.

    Full 8-row groups move in ``8 x 8`` blocks through vector shuffles; the gather
    visits them features outer (all the tile's rows for 8 features, so each line of the
    features-major block is written at once: 1.07-1.25x faster float32 products, change
    11), the scatter rows outer (features outer was 0.71-0.96x).

    ``gather``: ``ba[f * W + c] = X[(c0 + c) * L + f]``; ``scatter``:
    ``out[(c0 + c) * L + f] = fin[f * W + c]``.  Rows move in ``4 x 4`` blocks (written
    out; Numba runs LLVM without its SLP vectoriser, so these are scalar moves, but in
    an order about 3x faster than element-wise strided copies), partial tiles included;
    the last ``w % 4`` rows of a partial tile element by element.
    """
    Wc, Lc, B = S.c(W), S.c(L), _TB
    L4 = L - L % B

    def mv(row: str, f: str, c: str) -> str:
        if kind == "gather":
            return f"ba[({f}) * {Wc} + {c}] = X[{row} + {f}]"
        return f"out[{row} + {f}] = {fin}[({f}) * {Wc} + {c}]"

    simd: list[str] = []  # lines at the level of the tile loop's body
    V = _SIMD_BLOCK
    start = S.c(0)
    if _SIMD_TRANSPOSE and W % V == 0 and L >= V:
        # 8 x 8 blocks through vector shuffles (_numba_simd.transpose8), then the rows
        # left (w % 8) in the scalar 4 x 4 blocks below
        LV = L - L % V
        def mv8(row: str) -> str:  # one 8 x 8 block, rows from ``row`` on
            if kind == "gather":
                return f"transpose8(X, {row} + fb, {Lc}, ba, fb * {Wc} + cb, {Wc})"
            return f"transpose8({fin}, fb * {Wc} + cb, {Wc}, out, {row} + fb, {Lc})"
        if kind == "gather" and _GATHER_FEATURES_OUTER:
            # whole tile rows of the features-major block (W columns) at a time
            simd += _gather8_lines(S, L, W, S.c(0), S.c(LV), f"w - w % {S.c(V)}")
            if L % V:  # the features left, for the same rows, below
                simd += [f"for cb in range({S.c(0)}, w - w % {S.c(V)}, {S.c(V)}):",
                         f"    rb = (c0 + cb) * {Lc}"]
        else:
            simd += [f"for cb in range({S.c(0)}, w - w % {S.c(V)}, {S.c(V)}):",
                     f"    rb = (c0 + cb) * {Lc}",
                     f"    for fb in range({S.c(0)}, {S.c(LV)}, {S.c(V)}):",
                     f"        {mv8('rb')}"]
        if L % V:
            simd += [f"    for f in range({S.c(LV)}, {Lc}):",
                     f"        for i_ in range({S.c(V)}):",
                     "            " + mv(f"rb + i_ * {Lc}", "f", "cb + i_")]
        start = f"w - w % {S.c(V)}"
    # written one level deeper, like the scalar blocks below (all shifted back at the end)
    out = ["    " + line for line in simd]
    out += [f"    for cb in range({start}, w - w % {S.c(B)}, {S.c(B)}):"]
    for i in range(B):
        out.append(f"        rb{i} = (c0 + cb + {S.c(i)}) * {Lc}")
    if L4:
        out.append(f"        for fb in range({S.c(0)}, {S.c(L4)}, {S.c(B)}):")
        for i in range(B):
            for j in range(B):
                src = (f"X[rb{i} + fb + {S.c(j)}]" if kind == "gather"
                       else f"{fin}[(fb + {S.c(j)}) * {Wc} + cb + {S.c(i)}]")
                out.append(f"            a{i}_{j} = {src}")
        for j in range(B):
            for i in range(B):
                dst = (f"ba[(fb + {S.c(j)}) * {Wc} + cb + {S.c(i)}]" if kind == "gather"
                       else f"out[rb{i} + fb + {S.c(j)}]")
                out.append(f"            {dst} = a{i}_{j}")
    if L % B:
        out.append(f"        for f in range({S.c(L4)}, {Lc}):")
        for i in range(B):
            out.append("            " + mv(f"rb{i}", "f", f"cb + {S.c(i)}"))
    out = [line[4:] for line in out]  # the block loop above is written one level deep
    out += [f"for c_ in range(w - w % {S.c(B)}, w):", f"    rb = (c0 + c_) * {Lc}",
            f"    for f in range({Lc}):", "        " + mv("rb", "f", "c_")]
    return out


_FUSE_GATHER = True  # full row tiles gather in steps, each through the first passes (change 20)
_FUSE_GATHER_MIN = 64  # features gathered per interleaved step, at least
_STEP_MAX = 64  # the widest block (in input features) of a pass run step by step
_STEP_PASSES = 64  # most passes run step by step (1: the first pass only)
_SHARED_PASSES = True  # chain_buf calls step_blocks and chain_rest (each pass compiled once)
_STEP_PART = 16  # full tiles wider than this gather and step in parts of this many rows


def step_plan(shapes, W: int) -> tuple[int, tuple[int, ...]]:
    """``(CF, spans)``: a full row tile gathers ``CF`` input features at a time and runs
    the chain's first ``len(spans)`` panel passes on them before the next ``CF``;
    ``spans[p]``: the chain's input features behind one block of pass ``p``.
    ``(0, ())`` when the chain's row tiles gather the whole tile first.

    The first pass must start with a ``t = 1`` factor, so each of its blocks reads
    adjacent features, and the tile width must be a multiple of the ``8 x 8`` vector
    transposes.  A later pass joins the step while its factors nest in the previous one
    (:func:`_nests`: a block of it then reads the outputs of whole blocks before it,
    ``spans[p]`` adjacent input features), no pass of the step then writes over values
    that a later pass or step needs (:func:`_steps_safe`: a chain that grows writes
    its wider outputs into ``bb`` only, and one that narrows then widens stops), and its
    span is at most :data:`_STEP_MAX` features (and ``lcm(8, span)`` at most twice
    that).  ``CF`` is a multiple of ``lcm(8, spans)``, at least
    :data:`_FUSE_GATHER_MIN`.  The step's passes work on data in L1 or near it instead
    of on whole blocks in L2 (``README_kernels.md``, change 20).

    Examples
    --------
    >>> step_plan(((512, 8, 9, 1), (256, 2, 2, 8)), 16)  # VGG's first two factors
    (72, (9, 18))
    >>> step_plan(((8, 2, 2, 4),), 16)  # t = 4: a block's inputs are not adjacent
    (0, ())
    """
    if not (_FUSE_GATHER and _SIMD_TRANSPOSE and W % _SIMD_BLOCK == 0):
        return 0, ()
    if shapes[0][3] != 1:
        return 0, ()
    spans: list[int] = []
    writes: list[tuple[int, int, int]] = []  # per pass: buffer written, outputs, span
    span = outs = 1  # input features behind a block, and its outputs, so far
    cur = 0  # the buffer of the current values (0: ba, which holds the gathered input)
    for n0, cnt in panel_passes(shapes, W):
        group = shapes[n0:n0 + cnt]
        if (n0 and not _nests(shapes[n0 - 1], shapes[n0])) or _backward_group(group):
            break
        nxt = span * math.prod(sp[2] for sp in group)
        nouts = outs * math.prod(sp[1] for sp in group)
        dst = cur if _pass_in_place(shapes, n0, cnt) else 1 - cur
        if spans and not (nxt <= _STEP_MAX and _steps_safe(writes + [(dst, nouts, nxt)])):
            break
        span, outs, cur = nxt, nouts, dst
        spans.append(span)
        writes.append((dst, nouts, nxt))
        if len(spans) >= _STEP_PASSES:
            break
    # odd spans make long steps (lcm(8, 243) = 1944): fewer passes then
    while len(spans) > 1 and math.lcm(_SIMD_BLOCK, spans[-1]) > 2 * _STEP_MAX:
        spans.pop()
    if not spans:
        return 0, ()
    base = math.lcm(_SIMD_BLOCK, spans[-1])
    return base * max(1, -(-_FUSE_GATHER_MIN // base)), tuple(spans)


_TAIL_STEPS = True  # full row tiles run the last passes in steps, each scattered (change 37)
_TAIL_MIN = 64  # output features scattered per step, at least
_TAIL_SET_ROWS = 8  # most output rows of a step whose lines share an L1 set (4 KiB apart)


def tail_itemsizes(P: int, W: int) -> tuple[int, ...]:
    """The item sizes (4, 8, 16 bytes) whose products of ``P`` outputs a row run the
    tail steps of :func:`tail_plan` on tiles of ``W`` rows.

    A step writes all ``W`` rows of the tile before the next, where the whole tile's
    scatter writes 8 rows at a time: rows a multiple of 4 KiB apart fall in the same
    L1 set, and more than :data:`_TAIL_SET_ROWS` of them there (the L1 has 12 ways)
    evict the tile's own scratch (the 4096 butterfly's transposed chain, float32 on
    16-row tiles: 0.88-1.0x with the steps, VGG's 4608 outputs 1.09-1.32x; change 37).

    Examples
    --------
    >>> tail_itemsizes(4608, 16), tail_itemsizes(4608, 8), tail_itemsizes(4096, 16)
    ((4,), (4, 8, 16), ())
    """
    return tuple(isz for isz in (4, 8, 16)
                 if W * math.gcd(P * isz, 4096) <= _TAIL_SET_ROWS * 4096)


def tail_plan(shapes, W: int) -> tuple[int, int, tuple[int, ...]]:
    """``(p0, G, spans)``: a full row tile runs the chain's panel passes from ``p0`` on
    in steps of ``G`` blocks of pass ``p0`` and scatters each step's outputs to the
    product's rows while they are in L1 or near it; ``spans[i]``: the chain's output
    features behind one block of pass ``p0 + i``.  ``(0, 0, ())`` where the row tiles
    run every pass on the whole tile first.

    The mirror of :func:`step_plan` for chains whose last factor has ``t = 1``: the
    transposed chains of adjoint products (``Z @ op``), whose first factor has
    ``t > 1`` and so no gather step.  Every panel pass reads and writes its blocks'
    features as adjacent ranges (a block of ``nb`` of a single factor, a ``B`` of a
    fused group: :func:`_group_grid`), so a block of a pass and the blocks of the
    passes after it that read its outputs form a closed product whenever each pass has
    a multiple of the blocks of the one before; the last passes join while they do,
    while a block spans at most :data:`_STEP_MAX` output features (``lcm(8, span)`` at
    most twice that), and while no pass writes, per step, more features into the
    buffer that holds pass ``p0``'s input than pass ``p0`` reads from it (the next
    steps' inputs lie beyond them).  A step covers a multiple of ``lcm(8, span)``
    output features, at least :data:`_TAIL_MIN`.  Chains whose full tiles
    gather in steps (:func:`step_plan`) keep that plan only.

    Examples
    --------
    >>> tail_plan(((1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)), 16)  # an 8-point butterfly
    (0, 1, (8, 2))
    >>> tail_plan(((4, 2, 2, 1), (2, 2, 2, 2), (1, 2, 2, 4)), 16)  # forward: a gather step
    (0, 0, ())
    """
    none = (0, 0, ())
    if not (_TAIL_STEPS and _SIMD_TRANSPOSE and W % _SIMD_BLOCK == 0):
        return none
    if shapes[-1][3] != 1 or step_plan(shapes, W)[0]:
        return none
    passes = panel_passes(shapes, W)
    P = shapes[-1][0] * shapes[-1][1] * shapes[-1][3]
    # the buffer each pass reads and writes, and its input and output sizes
    cur, reads, writes = 0, [], []
    for n0, cnt in passes:
        reads.append(cur)
        cur = cur if _pass_in_place(shapes, n0, cnt) else 1 - cur
        writes.append(cur)
    grid = _pass_grid(shapes, passes)
    size_in = [shapes[n0][0] * shapes[n0][2] * shapes[n0][3] for n0, cnt in passes]
    size_out = [shapes[n0 + cnt - 1][0] * shapes[n0 + cnt - 1][1] * shapes[n0 + cnt - 1][3]
                for n0, cnt in passes]
    p0 = None
    for p in range(len(passes) - 1, -1, -1):
        span = P // grid[p]
        if p < len(passes) - 1 and grid[p + 1] % grid[p]:
            break  # a block of pass p + 1 would read outputs of two blocks of pass p
        if span > _STEP_MAX or math.lcm(_SIMD_BLOCK, span) > 2 * _STEP_MAX:
            break
        if any(writes[q] == reads[p] and size_out[q] > size_in[p]
               for q in range(p, len(passes))):
            break
        p0 = p
        if len(passes) - p >= _STEP_PASSES:
            break
    if p0 is None:
        return none
    span = P // grid[p0]
    base = math.lcm(_SIMD_BLOCK, span)
    CF = base * max(1, -(-_TAIL_MIN // base))
    return p0, min(CF // span, grid[p0]), tuple(P // grid[p] for p in range(p0, len(passes)))


def _steps_safe(writes) -> bool:
    """Whether passes that write, per step, ``outs / span`` times the step's features
    into buffer ``dst`` (``writes``: ``(dst, outs, span)`` in order) leave every value a
    later pass or step needs in place.

    Step ``c`` of a pass writes positions ``[c f, (c + 1) f)`` of its buffer, ``f`` its
    features per step.  Into ``ba`` (0) that must stay below the next steps' gathered
    input (``f`` at most the features gathered), and into the buffer of the last pass's
    results no pass may write fewer features per step than that last pass, or a later
    step would write over earlier steps' results.
    """
    last, lo, ls = writes[-1]
    return all((dst != 0 or outs <= span) and (dst != last or outs * ls >= lo * span)
               for dst, outs, span in writes)


def step_parts(shapes, W: int) -> bool:
    """Whether full row tiles of ``W`` rows gather and run each step in parts of
    ``_STEP_PART`` rows (``README_kernels.md``, change 26).

    On tiles wider than a part, for chains whose step holds a fused pass that is not
    in place (a narrowing pair, change 23: its inputs and middle values, two vectors a
    row at 32 float32 rows, outgrow the registers); its other passes then run their
    general column loops (at one part's width, not the tile's constant one).
    """
    H = _STEP_PART
    if not (H and W > H and W % H == 0):
        return False
    spans = step_plan(shapes, W)[1]
    passes = panel_passes(shapes, W)[:len(spans)]
    return any(cnt > 1 and not _in_place(shapes[n0:n0 + cnt]) for n0, cnt in passes)


def _fused_gather_lines(S: _Src, Q: int, W: int, CF: int, parts: bool) -> list[str]:
    """Lines of a full row tile (``w == W``) of ``Q`` input features: gather ``CF``
    features, run the step's passes on them (``step_blocks``), next ``CF``; the
    features left last.  ``parts``: each step in parts of ``_STEP_PART`` rows
    (:func:`step_parts`).
    """
    V, Wc, Qc = _SIMD_BLOCK, S.c(W), S.c(Q)
    nch = Q // CF

    def t8(lo: str, hi: str) -> list[str]:  # every row of the full tile
        return _gather8_lines(S, Q, W, lo, hi, Wc)

    out = [f"for ch_ in range({S.c(nch)}):", f"    fc_ = ch_ * {S.c(CF)}"]
    H = _STEP_PART
    if parts:
        # each step gathered and run in parts of H rows (views at the part's first
        # column, the rows still W apart): the gather and the step's passes run as
        # on H-row tiles, the passes after the step on the whole W rows (change 26)
        rows = _gather8_lines(S, Q, W, "fc_", f"fc_ + {S.c(CF)}", f"hc_ + {S.c(H)}", "hc_")
        out += [f"    for h_ in range({S.c(W // H)}):", f"        hc_ = h_ * {S.c(H)}"]
        out += ["        " + ln for ln in rows]
        out += [f"        step_blocks(V, ba[hc_:], bb[hc_:], {S.c(H)}, fc_, fc_ + {S.c(CF)})"]
    else:
        out += ["    " + ln for ln in t8("fc_", f"fc_ + {S.c(CF)}")]
        out += [f"    step_blocks(V, ba, bb, min(wr, wq), fc_, fc_ + {S.c(CF)})"]
    if Q % CF:
        Q8 = Q - Q % V
        out += t8(S.c(nch * CF), S.c(Q8))
        if Q % V:
            out += [f"for f in range({S.c(Q8)}, {Qc}):",
                    f"    for c_ in range({Wc}):",
                    f"        ba[f * {Wc} + c_] = X[(c0 + c_) * {Qc} + f]"]
        out += [f"step_blocks(V, ba, bb, min(wr, wq), {S.c(nch * CF)}, {Qc})"]
    return out


def _scatter8_lines(S: _Src, L: int, W: int, fin: str, flo: str, n: int) -> list[str]:
    """Lines scattering features ``flo .. flo + n - 1`` (``flo`` a multiple of 8) of a
    full tile's features-major ``fin`` to its ``W`` rows of ``out`` (``L`` features a
    row): ``8 x 8`` vector transposes, rows outer as the whole tile's scatter, and the
    last ``n % 8`` features one by one.
    """
    V, Lc, Wc = _SIMD_BLOCK, S.c(L), S.c(W)
    out = []
    if n >= V:
        out += [f"for cb in range({S.c(0)}, {Wc}, {S.c(V)}):",
                f"    rb = (c0 + cb) * {Lc}",
                f"    for fb in range({flo}, {S.plus(flo, S.c(n - n % V))}, {S.c(V)}):",
                f"        transpose8({fin}, fb * {Wc} + cb, {Wc}, out, rb + fb, {Lc})"]
    if n % V:
        out += [f"for f in range({S.plus(flo, S.c(n - n % V))}, {S.plus(flo, S.c(n))}):",
                f"    for c_ in range({Wc}):",
                f"        out[(c0 + c_) * {Lc} + f] = {fin}[f * {Wc} + c_]"]
    return out


def _tail_step_lines(S: _Src, P: int, W: int, fin: str, nblocks: int, G: int,
                     span: int) -> list[str]:
    """Lines of a full row tile's tail (:func:`tail_plan`): ``step_tail`` on ``G`` of
    the ``nblocks`` blocks of its first pass at a time (each ``span`` output features),
    and the step's ``G span`` outputs scattered at once; the blocks left last.
    """
    nst, rem = divmod(nblocks, G)
    out = [f"for st_ in range({S.c(nst)}):",
           f"    bs_ = st_ * {S.c(G)}",
           f"    step_tail(V, ba, bb, min(wr, wq), bs_, bs_ + {S.c(G)})"]
    out += ["    " + ln for ln in _scatter8_lines(S, P, W, fin, f"bs_ * {S.c(span)}", G * span)]
    if rem:
        out += [f"step_tail(V, ba, bb, min(wr, wq), {S.c(nst * G)}, {S.c(nblocks)})"]
        out += _scatter8_lines(S, P, W, fin, S.c(nst * G * span), rem * span)
    return out


_DECOR = "@njit(cache=True, nogil=True, fastmath={'contract'}, error_model='numpy')"
_WIDE_VECTORS = True  # every kernel calls _numba_simd.wide_vectors (README_kernels, change 10)


def _def(S: _Src, header: str, decor: str = _DECOR, wide: bool = True) -> None:
    """Start a generated kernel: decorator, ``def`` line, and the vector-width request.

    ``wide=False`` for kernels whose loops are too short for 512-bit vectors (the
    per-row ``rows_single``: its loops over ``t`` ran 0.83-0.87x as fast with them).
    """
    S.add(0, decor)
    S.add(0, f"def {header}:")
    if _WIDE_VECTORS and wide:
        S.add(1, "wide_vectors()")


def generate_source(shapes: tuple, W: int) -> str:
    """Python source of the kernel module for a chain.

    Parameters
    ----------
    shapes : tuple of (nb, r, s, t)
        The factors' value shapes, application order.
    W : int
        Tile width (rows or columns per panel) baked into the panel kernels.
    """
    N = len(shapes)
    sizes_in = [nb * s * t for nb, r, s, t in shapes]
    sizes_out = [nb * r * t for nb, r, s, t in shapes]
    Q, P = sizes_in[0], sizes_out[-1]
    F = max(sizes_in + sizes_out)
    offs = [0]
    for nb, r, s, t in shapes:
        offs.append(offs[-1] + nb * r * s * t)

    def slices(ind: int) -> None:
        # the factors' values as views of the one packed array V (one kernel argument
        # instead of N: the dispatcher's per-argument cost is part of a matvec's time)
        for i in range(N):
            S.add(ind, f"V{i} = V[{offs[i]}:{offs[i + 1]}]")
    S = _Src()
    body = S.lines
    bufs = _BUFS
    passes = panel_passes(shapes, W)

    def chain_fn(name: str, start: int, stop: int | None = None,
                 blocks: tuple[str, str] | None = None) -> int:
        """A features-major panel function running ``passes[start:stop]`` (ping-pong
        ``ba <-> bb``, the current values in ``ba`` at pass 0); the buffer index of the
        result.  ``blocks``: arguments ``blo, bhi`` bounding the blocks of pass
        ``start`` it runs, and the blocks of the later passes they feed (``step_tail``).
        """
        _def(S, f"{name}(V, ba, bb, wr{', blo, bhi' if blocks else ''})")
        slices(1)
        cur = 0  # the buffer holding the current values
        for p, (n0, cnt) in enumerate(passes):
            if p < start:  # run before (step_blocks): only the buffer it leaves
                cur = cur if _pass_in_place(shapes, n0, cnt) else 1 - cur
            elif stop is None or p < stop:
                rng = None
                if blocks:
                    m = grid[p] // grid[start]  # blocks of pass p per block of pass start
                    rng = (S.mul("blo", m), S.mul("bhi", m))
                cur = _emit_pass(S, shapes, n0, cnt, cur, W, rng)
        S.add(1, "return")
        S.add(0, "")
        return cur

    # -- chain_buf: features-major panel, ping-pong ba <-> bb ----------------------
    # -- full row tiles: the gather in steps, each through the first passes -------
    CF, spans = step_plan(shapes, W)
    grid = _pass_grid(shapes, passes)
    p0, G, tspans = tail_plan(shapes, W)
    tail_sizes = tail_itemsizes(P, W)
    if not tail_sizes:
        G = 0
    if G:
        # chain_buf made of the passes before the tail's and the tail's over all blocks
        _def(S, "chain_buf(V, ba, bb, wr)")
        if p0:
            S.add(1, "chain_head(V, ba, bb, wr)")
        S.add(1, f"step_tail(V, ba, bb, wr, {S.c(0)}, {S.c(grid[p0])})")
        S.add(1, "return")
        S.add(0, "")
        if p0:
            chain_fn("chain_head", 0, p0)
        cur = chain_fn("step_tail", p0, None, ("blo", "bhi"))
    elif CF and _SHARED_PASSES:
        # chain_buf made of the two functions below: each pass compiled once
        _def(S, "chain_buf(V, ba, bb, wr)")
        S.add(1, f"step_blocks(V, ba, bb, wr, {S.c(0)}, {S.c(Q)})")
        S.add(1, "chain_rest(V, ba, bb, wr)")
        S.add(1, "return")
        S.add(0, "")
        cur = chain_fn("chain_rest", len(spans))  # the passes after the step's
    else:
        cur = chain_fn("chain_buf", 0)
        if CF:
            chain_fn("chain_rest", len(spans))
    result_in_a = cur == 0
    fin = bufs[cur]
    if CF:
        # step_blocks: the step's passes on the blocks of input features flo .. fhi-1
        _def(S, "step_blocks(V, ba, bb, wr, flo, fhi)")
        nf = sum(passes[p][1] for p in range(len(spans)))
        for n in range(nf):
            S.add(1, f"V{n} = V[{offs[n]}:{offs[n + 1]}]")
        cur = 0
        rows = _STEP_PART if step_parts(shapes, W) else W  # full tiles' wr here
        for p, span in enumerate(spans):
            n0, cnt = passes[p]
            cur = _emit_pass(S, shapes, n0, cnt, cur, W,
                             (f"flo // {S.c(span)}", f"fhi // {S.c(span)}"), rows)
        S.add(1, "return")
        S.add(0, "")

    # -- rows_tiles / cols_tiles: gather a tile features-major, chain, scatter -------
    Wc, Qc, Pc = S.c(W), S.c(Q), S.c(P)
    rows_io = (_transpose_lines(S, "gather", Q, W, fin), _transpose_lines(S, "scatter", P, W, fin))
    cols_io = (  # X (Q, k) and out (P, k) row-major: a tile is W columns, copied
        [f"for f in range({Qc}):", "    xb = f * ku + c0", f"    fb = f * {Wc}",
         "    for c_ in range(w):", "        ba[fb + c_] = X[xb + c_]"],
        [f"for f in range({Pc}):", "    ob = f * ku + c0", f"    fb = f * {Wc}",
         "    for c_ in range(w):", f"        out[ob + c_] = {fin}[fb + c_]"])
    for fname, (gather, scatter) in (("rows_tiles", rows_io), ("cols_tiles", cols_io)):
        _def(S, f"{fname}(V, X, out, k, t0, t1, ba, bb, wr, xn)")
        if _PLACE_STACK:  # chain_buf's frame (its spill slots) at one place (_numba_stack)
            S.add(1, "place_stack()")
        S.add(1, "ku = np.uint64(k)")
        S.add(1, "xu = np.uint64(xn)")
        S.add(1, "for tl in range(np.uint64(t0), np.uint64(t1)):")
        S.add(2, f"c0 = tl * {Wc}")
        S.add(2, f"w = min({Wc}, ku - c0)")
        # a partial tile computes only its columns, rounded up to a vector (W / 4)
        S.add(2, f"wq = (w + {S.c(W // 4 - 1)}) // {S.c(W // 4)} * {S.c(W // 4)}")
        # an input with xn < Q features (the rest are zeros): the block is zeroed and the
        # input gathered element-wise from its own layout, no padded copy of the input
        S.add(2, f"if xu < {Qc}:")
        S.add(3, f"ba[:{S.c(Q * W)}] = 0")
        if fname == "rows_tiles":
            S.add(3, "for c_ in range(w):")
            S.add(4, "rb = (c0 + c_) * xu")
            S.add(4, "for f in range(xu):")
            S.add(5, f"ba[f * {Wc} + c_] = X[rb + f]")
        else:
            S.add(3, "for f in range(xu):")
            S.add(4, "xb = f * ku + c0")
            S.add(4, f"fb = f * {Wc}")
            S.add(4, "for c_ in range(w):")
            S.add(5, "ba[fb + c_] = X[xb + c_]")
        fuse = CF and fname == "rows_tiles"
        if fuse:
            S.add(3, "chain_buf(V, ba, bb, min(wr, wq))")
            S.add(2, f"elif w == {Wc}:")
            for line in _fused_gather_lines(S, Q, W, CF, step_parts(shapes, W)):
                S.add(3, line)
            S.add(3, "chain_rest(V, ba, bb, min(wr, wq))")
        S.add(2, "else:")
        # full inputs: only the columns between w and wq are zeroed (not the whole
        # block: for VGG at batch 16 that was a 590 KB memset per call)
        S.add(3, "if w < wq:")
        S.add(4, f"for f in range({Qc}):")
        S.add(5, "for c_ in range(w, wq):")
        S.add(6, f"ba[f * {Wc} + c_] = 0")
        for line in gather:
            S.add(3, line)
        if G and fname == "rows_tiles":
            # full tiles: the passes before the tail's on the whole tile, then the
            # tail's in steps, each step's outputs scattered at once (change 37)
            if len(tail_sizes) < 3:  # the others' rows: chain_buf, then the scatter
                sizes = " or ".join(f"out.itemsize == {isz}" for isz in tail_sizes)
                S.add(2, f"if w == {Wc} and ({sizes}):")
            else:
                S.add(2, f"if w == {Wc}:")
            if p0:
                S.add(3, "chain_head(V, ba, bb, min(wr, wq))")
            for line in _tail_step_lines(S, P, W, fin, grid[p0], G, tspans[0]):
                S.add(3, line)
            S.add(2, "else:")
            S.add(3, "chain_buf(V, ba, bb, min(wr, wq))")
            for line in scatter:
                S.add(3, line)
            S.add(0, "")
            continue
        S.add(3 if fuse else 2, "chain_buf(V, ba, bb, min(wr, wq))")
        for line in scatter:
            S.add(2, line)
        S.add(0, "")

    # -- rows_single -----------------------------------------------------------------
    _def(S, "rows_single(V, X, out, r0, r1, ba, bb, one)", wide=False)
    slices(1)
    S.add(1, "for row in range(np.uint64(r0), np.uint64(r1)):")
    S.add(2, f"xrow = row * {S.c(Q)}")
    S.add(2, f"orow = row * {S.c(P)}")
    for n, spec in enumerate(shapes):
        if n == 0:
            src, sbase = "X", "xrow"
        else:
            src, sbase = bufs[(n + 1) % 2], S.c(0)
        if n == N - 1:
            dst, dbase = "out", "orow"
        else:
            dst, dbase = bufs[n % 2], S.c(0)
        _emit_factor_vec(S, 2, spec, f"V{n}", src, sbase, dst, dbase, str(n))
    S.add(0, "")

    head = [
        f'"""debutla Numba kernels (generated, version {GENERATOR_VERSION}; do not edit).',
        "",
        f"chain (nb, r, s, t) in application order: {list(shapes)}",
        f"tile width W = {W}; Q = {Q}, P = {P}, widest vector F = {F}",
        '"""',
        "import numpy as np",
        "from numba import njit",
        "from debutla.backends._numba_simd import group_mac, panel_mac, transpose8, "
        "wide_vectors",
        "from debutla.backends._numba_stack import place_stack",
        "",
        f"W = {W}",
        f"Q = {Q}",
        f"P = {P}",
        f"F = {F}",
        f"RESULT_IN_A = {result_in_a}",
    ]
    head += [f"_u{n} = np.uint64({n})" for n in sorted(S.consts)]
    head += ["", ""]
    return "\n".join(head + body) + "\n"


def norm_shapes(shapes) -> tuple:
    """``shapes`` as a tuple of tuples of Python ints (the modules' table key).

    Examples
    --------
    >>> import numpy as np
    >>> norm_shapes([np.array([1, 2, 2, 1])])
    ((1, 2, 2, 1),)
    """
    return tuple(tuple(int(v) for v in sh) for sh in shapes)


def kernel_module(shapes: tuple, W: int):
    """The kernel module for a chain, through the checked kernel cache.

    Parameters
    ----------
    shapes : tuple of (nb, r, s, t)
        The factors' value shapes, application order.
    W : int
        Tile width.

    Returns
    -------
    module
        ``debutla.backends._kernels.k_<hash>`` (executed once per process; see
        :mod:`debutla.backends._cache` for where the file lives and what happens when
        the cache cannot be used).
    """
    shapes = norm_shapes(shapes)
    key = (shapes, int(W))
    mod = _modules.get(key)
    if mod is None:
        mod = _modules[key] = _cache.load_module(generate_source(shapes, int(W)), "k")
    return mod


#: Kernel modules by ``(shapes, W)``, made once per process: generating a chain's source
#: takes about 1 ms (VGG chain), and a torch layer makes a new operator state after each
#: optimiser step.  Whoever changes the generator's switches clears it
#: (``benchmarks/bench_kernels.py``); :func:`replace_module` after a cache failure.
_modules: dict = {}


def replace_module(shapes: tuple, W: int, mod) -> None:
    """Serve ``mod`` (a module compiled in memory after a cache failure) from now on."""
    _modules[(norm_shapes(shapes), int(W))] = mod


def uncached_kernel_module(shapes: tuple, W: int):
    """The kernel module for a chain compiled in memory (after a cache failure)."""
    return _cache.uncached_module(generate_source(norm_shapes(shapes), int(W)), "k")
