"""Vector code for the Numba kernels: an ``8 x 8`` block transpose written in LLVM IR,
the value gradients' blocks of dot products (:func:`add_dots`), the panel passes' steps
on full tiles (:func:`panel_mac` for one factor, :func:`group_mac` for fused ones), and
the request for the CPU's widest vectors (:func:`wide_vectors`).

Numba compiles without LLVM's SLP vectoriser, so a transpose written element by element
in Python source stays a sequence of scalar moves (``benchmarks/README_kernels.md``).
:func:`transpose8` emits the shuffles itself through :func:`numba.extending.intrinsic`:
for 4-byte elements (float32) eight 8-wide vector loads, the 24 ``shufflevector``
steps of the unpack / shuffle / lane-permute network, eight vector stores; for 8-byte
elements (float64, complex64) four ``4 x 4`` networks of 4-wide vectors; other element
sizes (complex128) move element by element.  Loads and stores are unaligned; ``src`` and
``dst`` must not overlap.

The generated kernel modules (:mod:`debutla.backends._numba_codegen`) call it in the
row-layout gathers and scatters of their tile kernels.  A change here must come with a
new ``GENERATOR_VERSION``: Numba's cache of a generated module does not see it.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["transpose8", "wide_vectors", "add_dots", "panel_mac", "group_mac", "BLOCK",
           "VECTOR_BITS"]

#: Rows and columns of the block moved by :func:`transpose8`.
BLOCK = 8
#: The vector width (bits) that :func:`wide_vectors` asks LLVM to prefer.
VECTOR_BITS = 512

# the 8 x 8 network for 8 lanes: unpack pairs of rows, shuffle pairs of pairs, swap the
# 128-bit halves (what vunpcklps / vshufps / vperm2f128 do)
_UNPACK_LO8 = [0, 8, 1, 9, 4, 12, 5, 13]
_UNPACK_HI8 = [2, 10, 3, 11, 6, 14, 7, 15]
_SHUF_LO8 = [0, 1, 8, 9, 4, 5, 12, 13]
_SHUF_HI8 = [2, 3, 10, 11, 6, 7, 14, 15]
_HALF_LO8 = [0, 1, 2, 3, 8, 9, 10, 11]
_HALF_HI8 = [4, 5, 6, 7, 12, 13, 14, 15]
# the 4 x 4 network for 4 lanes
_UNPACK_LO4 = [0, 4, 2, 6]
_UNPACK_HI4 = [1, 5, 3, 7]
_HALF_LO4 = [0, 1, 4, 5]
_HALF_HI4 = [2, 3, 6, 7]


def _mask(idx: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), len(idx)), idx)


def _transpose_rows(builder, rows: list) -> list:
    """The transpose of a square block held as a list of row vectors (8 or 4 lanes)."""
    sh = builder.shuffle_vector
    if len(rows) == 8:
        t = []
        for i in range(0, 8, 2):
            t.append(sh(rows[i], rows[i + 1], _mask(_UNPACK_LO8)))
            t.append(sh(rows[i], rows[i + 1], _mask(_UNPACK_HI8)))
        # t[0] = lo(r0, r1), t[1] = hi(r0, r1), t[2] = lo(r2, r3), t[3] = hi(r2, r3), ...
        u = [sh(t[0], t[2], _mask(_SHUF_LO8)), sh(t[0], t[2], _mask(_SHUF_HI8)),
             sh(t[1], t[3], _mask(_SHUF_LO8)), sh(t[1], t[3], _mask(_SHUF_HI8)),
             sh(t[4], t[6], _mask(_SHUF_LO8)), sh(t[4], t[6], _mask(_SHUF_HI8)),
             sh(t[5], t[7], _mask(_SHUF_LO8)), sh(t[5], t[7], _mask(_SHUF_HI8))]
        return [sh(u[0], u[4], _mask(_HALF_LO8)), sh(u[1], u[5], _mask(_HALF_LO8)),
                sh(u[2], u[6], _mask(_HALF_LO8)), sh(u[3], u[7], _mask(_HALF_LO8)),
                sh(u[0], u[4], _mask(_HALF_HI8)), sh(u[1], u[5], _mask(_HALF_HI8)),
                sh(u[2], u[6], _mask(_HALF_HI8)), sh(u[3], u[7], _mask(_HALF_HI8))]
    t0 = sh(rows[0], rows[1], _mask(_UNPACK_LO4))
    t1 = sh(rows[0], rows[1], _mask(_UNPACK_HI4))
    t2 = sh(rows[2], rows[3], _mask(_UNPACK_LO4))
    t3 = sh(rows[2], rows[3], _mask(_UNPACK_HI4))
    return [sh(t0, t2, _mask(_HALF_LO4)), sh(t1, t3, _mask(_HALF_LO4)),
            sh(t0, t2, _mask(_HALF_HI4)), sh(t1, t3, _mask(_HALF_HI4))]


@intrinsic
def transpose8(typingctx, src, so, ss, dst, do, ds):
    """``dst[do + j * ds + i] = src[so + i * ss + j]`` for ``i, j < 8``.

    ``src`` and ``dst``: 1-D C-contiguous arrays of one dtype; offsets and strides are
    integers, in elements.  No bounds checks (the callers' loops keep in range).
    """
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and src.ndim == 1 and dst.ndim == 1):
        return None
    for a in (so, ss, do, ds):
        if not isinstance(a, types.Integer):
            return None
    sig = types.void(src, so, ss, dst, do, ds)

    def codegen(context, builder, signature, args):
        sty, soty, ssty, dty, doty, dsty = signature.args
        srcv, sov, ssv, dstv, dov, dsv = args
        sdata = context.make_array(sty)(context, builder, srcv).data
        ddata = context.make_array(dty)(context, builder, dstv).data
        i64 = ir.IntType(64)
        so_ = context.cast(builder, sov, soty, types.int64)
        ss_ = context.cast(builder, ssv, ssty, types.int64)
        do_ = context.cast(builder, dov, doty, types.int64)
        ds_ = context.cast(builder, dsv, dsty, types.int64)
        elt = context.get_data_type(sty.dtype)
        size = context.get_abi_sizeof(elt)

        def at(base, off, i, stride, j):
            idx = builder.add(builder.add(off, builder.mul(ir.Constant(i64, i), stride)),
                              ir.Constant(i64, j))
            return builder.gep(base, [idx])

        if size in (4, 8):
            lanes = 8 if size == 4 else 4
            # lanes of the element's own type for float32/float64, else (complex64: a
            # pair of floats) an integer of its size: the moves are bit copies either way
            lane = elt if isinstance(elt, (ir.FloatType, ir.DoubleType)) else \
                ir.IntType(8 * size)
            vty = ir.VectorType(lane, lanes)
            for bi in range(0, BLOCK, lanes):  # source row block
                for bj in range(0, BLOCK, lanes):  # source column block
                    rows = [builder.load(builder.bitcast(at(sdata, so_, bi + i, ss_, bj),
                                                         vty.as_pointer()), align=size)
                            for i in range(lanes)]
                    cols = _transpose_rows(builder, rows)
                    for j in range(lanes):
                        ptr = builder.bitcast(at(ddata, do_, bj + j, ds_, bi), vty.as_pointer())
                        builder.store(cols[j], ptr, align=size)
        else:
            vals = [[builder.load(at(sdata, so_, i, ss_, j)) for j in range(BLOCK)]
                    for i in range(BLOCK)]
            for i in range(BLOCK):
                for j in range(BLOCK):
                    builder.store(vals[i][j], at(ddata, do_, j, ds_, i))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with the CPU's widest vectors.

    LLVM's tuning for Intel CPUs with AVX-512 (Skylake-X and later, as Numba sees the
    host) prefers 256-bit vectors, so Numba's loop vectoriser never uses the 512-bit
    registers and their doubled FMA throughput.  Called anywhere in a function, this
    sets that function's ``"prefer-vector-width"`` attribute to :data:`VECTOR_BITS`
    (what clang's ``-mprefer-vector-width=512`` does), for that function only: the rest
    of the process keeps Numba's settings.  On CPUs without AVX-512 it changes nothing
    (LLVM caps the width at the widest legal vector).  Measured on the 2-vCPU Intel
    Xeon (AVX-512) machine: ``benchmarks/README_kernels.md``, change 10.

    Examples
    --------
    >>> import numba, numpy as np
    >>> @numba.njit
    ... def axpy(y, x, a):
    ...     wide_vectors()
    ...     for i in range(y.size):
    ...         y[i] += a * x[i]
    >>> y = np.ones(4); axpy(y, np.arange(4.0), 2.0); y
    array([1., 3., 5., 7.])
    """
    def codegen(context, builder, signature, args):
        # llvmlite's attribute set admits only keyword attributes; a string attribute
        # is written as it appears in the IR (set.add skips that check)
        set.add(builder.function.attributes, f'"prefer-vector-width"="{VECTOR_BITS}"')
        return context.get_dummy_value()

    return types.void(), codegen


def _reduce_lanes(builder, vecs: list, lanes: int) -> list:
    """The sums of the lanes of each vector in ``vecs`` (``S`` vectors of ``lanes``
    lanes, ``S`` a power of two at most ``lanes``), as one vector's first ``S`` lanes.

    A transposing reduction: each level pairs the vectors and halves the partial sums
    each holds (two shuffles and one add per pair), so ``S`` sums take ``S - 1 +
    log2(lanes / S)`` adds instead of ``S log2(lanes)``; the summation order is fixed.
    """
    sh = builder.shuffle_vector
    k, p = 1, lanes  # each vector holds k sums of p partials (sum i in lanes i*p ...)
    while len(vecs) > 1:
        h = p // 2
        lo = [base + i * p + c for base in (0, lanes) for i in range(k) for c in range(h)]
        hi = [x + h for x in lo]
        vecs = [builder.fadd(sh(vecs[i], vecs[i + 1], _mask(lo)),
                             sh(vecs[i], vecs[i + 1], _mask(hi)))
                for i in range(0, len(vecs), 2)]
        k, p = 2 * k, h
    v = vecs[0]
    while p > 1:  # one vector of k sums of p partials: halve the partials in place
        h = p // 2
        lo = [i * p + c for i in range(k) for c in range(h)]
        v = builder.fadd(sh(v, v, _mask(lo)), sh(v, v, _mask([x + h for x in lo])))
        p = h
    return [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in range(k)]


def _unpack(context, builder, signature, args, arrays, ints) -> tuple:
    """An intrinsic's arguments: the data pointers of the 1-D ``arrays`` (positions) and
    the ``ints`` (positions) as int64 values.
    """
    tys = signature.args
    data = [context.make_array(tys[i])(context, builder, args[i]).data for i in arrays]
    nums = [context.cast(builder, args[i], tys[i], types.int64) for i in ints]
    return data, nums


def _vector_type(context, signature, w_n: int) -> tuple:
    """``(element type, its size, vector type)`` for rows of ``w_n`` elements of the
    first argument's dtype: vectors of 64 bytes, or of the largest power of two below
    that divides ``w_n``.
    """
    elt = context.get_data_type(signature.args[0].dtype)
    size = context.get_abi_sizeof(elt)
    lanes = max(1, 64 // size)
    while w_n % lanes:
        lanes //= 2
    return elt, size, ir.VectorType(elt, lanes)


def _real_rows(dtype, w_n: int, b_n: int) -> bool:
    """Whether the vector steps (:func:`panel_mac`, :func:`group_mac`) run rows of
    ``w_n`` elements of ``dtype``: a real dtype, at most ``b_n`` bytes a row.
    """
    return isinstance(dtype, types.Float) and w_n * dtype.bitwidth <= 8 * b_n


def _row_ptr(builder, vty, base, off, n: int, stride, part: int):
    """A pointer to the ``vty`` vector at element ``off + n stride + part`` of ``base``."""
    i64 = ir.IntType(64)
    idx = builder.add(builder.add(off, builder.mul(ir.Constant(i64, n), stride)),
                      ir.Constant(i64, part))
    return builder.bitcast(builder.gep(base, [idx]), vty.as_pointer())


def _splat(builder, vty, scalar):
    """``scalar`` broadcast to every lane of ``vty``."""
    undef = ir.Constant(vty, None)
    i32 = ir.IntType(32)
    w = builder.insert_element(undef, scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(w, undef, ir.Constant(ir.VectorType(i32, vty.count),
                                                        [0] * vty.count))


#: the generated kernels' ``fastmath={'contract'}``: the vector steps' operations carry
#: it too, so LLVM fuses the same multiply-adds as in the generated loops (same bits)
_CONTRACT = ("contract",)


def _sum_products(builder, pairs):
    """``a0 b0 + a1 b1 + ...`` for ``pairs`` of vectors, left to right, as the generated
    source writes it (:data:`_CONTRACT` on every operation).
    """
    total = None
    for a, b in pairs:
        term = builder.fmul(a, b, flags=_CONTRACT)
        total = term if total is None else builder.fadd(total, term, flags=_CONTRACT)
    return total


@intrinsic(prefer_literal=True)
def add_dots(typingctx, dst, do, dg, dj, a, ao, astr, b, bo, bstr, G, J, W):
    """``dst[do + g dg + j dj] += sum_{c < W} a[ao + g astr + c] * b[bo + j bstr + c]``
    for every ``g < G``, ``j < J``: a block of ``G J`` dot products of length ``W``.

    ``G``, ``J`` and ``W`` are integer literals (constants of the generated source),
    ``G J`` at most 8.  The rows are loaded as vectors of 64 bytes (or of the largest
    power of two that divides ``W``), multiplied and added with ``fma`` into one
    vector accumulator per dot product, and the accumulators reduced together
    (:func:`_reduce_lanes`).  LLVM's loop vectoriser does worse on these short loops:
    it vectorises ``W`` columns by 16 lanes times 4 (a 64-column step), so at ``W`` =
    32 only its 8-lane remainder loop ran, one chain of dependent ``fma`` per sum,
    then one reduction per sum (``benchmarks/README_kernels.md``, change 16).  No
    bounds checks; ``dst`` must not overlap ``a`` or ``b``.
    """
    if not all(isinstance(x, types.Array) and x.ndim == 1 for x in (dst, a, b)):
        return None
    if not (dst.dtype == a.dtype == b.dtype and isinstance(a.dtype, types.Float)):
        return None
    lits = (G, J, W)
    if not all(isinstance(x, types.IntegerLiteral) for x in lits):
        return None
    g_n, j_n, w_n = (x.literal_value for x in lits)
    if not (1 <= g_n * j_n <= 8 and w_n >= 1):
        return None
    for x in (do, dg, dj, ao, astr, bo, bstr):
        if not isinstance(x, types.Integer):
            return None
    sig = types.void(dst, do, dg, dj, a, ao, astr, b, bo, bstr, G, J, W)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        (dd, ad, bd), (do_, dg_, dj_, ao_, as_, bo_, bs_) = _unpack(
            context, builder, signature, args, (0, 4, 7), (1, 2, 3, 5, 6, 8, 9))
        elt, size, vty = _vector_type(context, signature, w_n)
        lanes = vty.count

        def vload(base, row_off, c):
            idx = builder.add(row_off, ir.Constant(i64, c))
            return builder.load(builder.bitcast(builder.gep(base, [idx]), vty.as_pointer()),
                                align=size)

        arow = [builder.add(ao_, builder.mul(ir.Constant(i64, g), as_)) for g in range(g_n)]
        brow = [builder.add(bo_, builder.mul(ir.Constant(i64, j), bs_)) for j in range(j_n)]
        ename = "f32" if size == 4 else "f64"
        fma = cgutils.get_or_insert_function(builder.module,
                                             ir.FunctionType(vty, [vty, vty, vty]),
                                             f"llvm.fma.v{lanes}{ename}")
        acc = [None] * (g_n * j_n)
        for c in range(0, w_n, lanes):
            av = [vload(ad, r, c) for r in arow]
            bv = [vload(bd, r, c) for r in brow]
            for g in range(g_n):
                for j in range(j_n):
                    i = g * j_n + j
                    acc[i] = (builder.fmul(av[g], bv[j]) if acc[i] is None
                              else builder.call(fma, [av[g], bv[j], acc[i]]))
        count = 1
        while count < len(acc):
            count *= 2
        if count <= lanes:
            zero = ir.Constant(vty, [ir.Constant(elt, 0.0)] * lanes)
            sums = _reduce_lanes(builder, acc + [zero] * (count - len(acc)), lanes)
        else:  # fewer lanes than sums (a tiny W): one reduction per sum
            sums = []
            for v in acc:
                x = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
                for ln in range(1, lanes):
                    x = builder.fadd(x, builder.extract_element(
                        v, ir.Constant(ir.IntType(32), ln)))
                sums.append(x)
        for g in range(g_n):
            for j in range(j_n):
                idx = builder.add(do_, builder.add(builder.mul(ir.Constant(i64, g), dg_),
                                                   builder.mul(ir.Constant(i64, j), dj_)))
                ptr = builder.gep(dd, [idx])
                builder.store(builder.fadd(builder.load(ptr), sums[g * j_n + j]), ptr)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def panel_mac(typingctx, dst, o, og, src, x, xj, V, v, vg, vj, G, N, W, ACC, B):
    """``dst[o + g og + c] (+)= sum_{j < N} V[v + g vg + j vj] * src[x + j xj + c]``
    for every ``g < G``, ``c < W``, in vector code; returns whether it did so.

    One step of a panel pass on a full tile (:func:`debutla.backends._numba_codegen.
    _emit_factor_panel`): the ``N`` input rows of ``W`` columns are loaded once as
    vectors (in parts of 64 bytes), each coefficient is broadcast, and each of the ``G``
    output rows is stored (``ACC`` = 1: added to what it holds) once.  The arithmetic is the
    generated loop's, term by term in the same order with the same ``contract`` flag
    (``w0 z0 + w1 z1 + ...``, then ``dst + sum``), so the bits are the loop's.  Where
    the loop runs one ``W``-column step per ``(block, k)`` (a 16-row tile), LLVM's loop
    vectoriser wraps that step in trip-count and alias checks and a scalar remainder
    loop; this is the step alone (``benchmarks/README_kernels.md``, change 28).

    ``G``, ``N``, ``W``, ``ACC`` and ``B`` are integer literals (constants of the
    generated source).  For a real dtype and rows of at most ``B`` bytes it returns
    ``True``; otherwise (complex, or wider rows) it does nothing and returns ``False``,
    and the generated source runs its loop instead:
    ``if wr == W and panel_mac(...): pass`` / ``else: <loop>``, folded at compile time.
    No bounds checks; ``dst`` rows must not overlap the ``src`` rows.
    """
    if not all(isinstance(a, types.Array) and a.ndim == 1 for a in (dst, src, V)):
        return None
    if not (dst.dtype == src.dtype == V.dtype):
        return None
    lits = (G, N, W, ACC, B)
    if not all(isinstance(a, types.IntegerLiteral) for a in lits):
        return None
    g_n, n_n, w_n, acc_, b_n = (a.literal_value for a in lits)
    if not (g_n >= 1 and n_n >= 1 and w_n >= 1):
        return None
    for a in (o, og, x, xj, v, vg, vj):
        if not isinstance(a, types.Integer):
            return None
    sig = types.boolean(dst, o, og, src, x, xj, V, v, vg, vj, G, N, W, ACC, B)
    real = _real_rows(dst.dtype, w_n, b_n)

    def codegen(context, builder, signature, args):
        if not real:
            return ir.Constant(ir.IntType(1), 0)
        i64 = ir.IntType(64)
        (dd, sd, vd), (o_, og_, x_, xj_, v_, vg_, vj_) = _unpack(
            context, builder, signature, args, (0, 3, 6), (1, 2, 4, 5, 7, 8, 9))
        # the columns in parts of one 64-byte vector (or less), each part loaded,
        # computed and stored before the next: fewer registers alive than W-lane vectors
        _, size, vty = _vector_type(context, signature, w_n)
        coef = {}
        for g in range(g_n):
            for j in range(n_n):
                idx = builder.add(v_, builder.add(builder.mul(ir.Constant(i64, g), vg_),
                                                  builder.mul(ir.Constant(i64, j), vj_)))
                coef[g, j] = _splat(builder, vty, builder.load(builder.gep(vd, [idx])))
        for c in range(0, w_n, vty.count):
            z = [builder.load(_row_ptr(builder, vty, sd, x_, j, xj_, c), align=size)
                 for j in range(n_n)]
            for g in range(g_n):
                total = _sum_products(builder, [(coef[g, j], z[j]) for j in range(n_n)])
                ptr = _row_ptr(builder, vty, dd, o_, g, og_, c)
                if acc_:
                    total = builder.fadd(builder.load(ptr, align=size), total,
                                         flags=_CONTRACT)
                builder.store(total, ptr, align=size)
        return ir.Constant(ir.IntType(1), 1)

    return sig, codegen


def _parse_program(text: str) -> list:
    """``[(target, [(coefficient, source), ...]), ...]`` of a :func:`group_mac`
    program: statements ``target=c*source,c*source,...`` separated by ``;``.
    """
    out = []
    for stmt in text.split(";"):
        target, _, rhs = stmt.partition("=")
        terms = []
        for term in rhs.split(","):
            c, _, src = term.partition("*")
            terms.append((int(c), src))
        out.append((target, terms))
    return out


@intrinsic(prefer_literal=True)
def group_mac(typingctx, dst, o, os_, src, x, xs, C, PROG, W, B):
    """A fused panel pass's step on ``W`` columns in vector code: the straight-line
    ``PROG`` over rows of ``src`` and ``dst``; returns whether it ran it.

    ``PROG`` (a string literal written by
    :func:`debutla.backends._numba_codegen._group_program`) is a list of statements
    ``target=c*source,c*source,...`` separated by ``;``: a source ``iN`` is the input
    row at ``x + N xs`` (loaded once), ``mN``-like names are values computed by earlier
    statements, a target ``oN`` is the output row stored at ``o + N os_``, and ``c``
    indexes the coefficient tuple ``C``.  Each sum is formed left to right with the
    generated kernels' ``contract`` flag, as the generated loop writes it, so the bits
    are the loop's.  Columns go in parts of one 64-byte vector.  ``W`` and ``B`` are
    integer literals; for a dtype that is not real, or ``W`` elements over ``B`` bytes,
    it returns ``False`` and does nothing (the generated source then runs its loop).
    All input rows are loaded before any output row is stored, so ``dst`` may be
    ``src`` (in-place passes).
    """
    if not all(isinstance(a, types.Array) and a.ndim == 1 for a in (dst, src)):
        return None
    if dst.dtype != src.dtype or not isinstance(C, types.BaseTuple):
        return None
    if not (isinstance(PROG, types.StringLiteral) and isinstance(W, types.IntegerLiteral)
            and isinstance(B, types.IntegerLiteral)):
        return None
    for a in (o, os_, x, xs):
        if not isinstance(a, types.Integer):
            return None
    prog = _parse_program(PROG.literal_value)
    w_n, b_n = W.literal_value, B.literal_value
    real = _real_rows(dst.dtype, w_n, b_n) and all(ty == dst.dtype for ty in C.types)
    sig = types.boolean(dst, o, os_, src, x, xs, C, PROG, W, B)

    def codegen(context, builder, signature, args):
        if not real:
            return ir.Constant(ir.IntType(1), 0)
        (dd, sd), (o_, os2, x_, xs_) = _unpack(context, builder, signature, args,
                                               (0, 3), (1, 2, 4, 5))
        _, size, vty = _vector_type(context, signature, w_n)
        coefs = {}

        def coef(c):
            if c not in coefs:
                coefs[c] = _splat(builder, vty, builder.extract_value(args[6], c))
            return coefs[c]

        for part in range(0, w_n, vty.count):
            vals = {}
            for _, terms in prog:  # every input row first (in place: before any store)
                for _, name in terms:
                    if name[0] == "i" and name not in vals:
                        ptr = _row_ptr(builder, vty, sd, x_, int(name[1:]), xs_, part)
                        vals[name] = builder.load(ptr, align=size)
            for target, terms in prog:
                total = _sum_products(builder, [(coef(c), vals[name]) for c, name in terms])
                if target[0] == "o":
                    builder.store(total, _row_ptr(builder, vty, dd, o_, int(target[1:]),
                                                  os2, part), align=size)
                else:
                    vals[target] = total
        return ir.Constant(ir.IntType(1), 1)

    return sig, codegen
