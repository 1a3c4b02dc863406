"""DeBut factor specifications and chains.

Pure Python: nothing here touches arrays.  See ``docs/conventions.rst`` (and
DESIGN.md section 1) for the conventions: factors are listed in the order they are
applied to a vector, the paper's notation is written output <- input.
"""

from __future__ import annotations

import math
import operator as _operator
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, Sequence, overload

from ._validation import check_int

__all__ = ["FactorSpec", "Chain", "as_chain", "design_chain", "PAPER_CHAINS"]


@dataclass(frozen=True, slots=True)
class FactorSpec:
    """The shape of one DeBut factor ``R^(p,q)_(r,s,t)``.

    A ``p x q`` matrix, block-diagonal with ``nb = p/(r t) = q/(s t)`` blocks, each block
    an ``r x s`` grid of ``t x t`` diagonal matrices.  It holds ``nnz = p s = q r``
    values, stored in the canonical layout ``(nb, r, s, t)``.

    Parameters
    ----------
    p, q : int
        Number of rows and columns.
    r, s, t : int
        Block grid rows, block grid columns and diagonal size.

    Raises
    ------
    ValueError
        If a number is not positive, or ``p`` is not a multiple of ``r*t``, ``q`` not a
        multiple of ``s*t``, or ``p/(r t) != q/(s t)``.

    Examples
    --------
    >>> f = FactorSpec(4096, 4608, 8, 9, 1)
    >>> f.nb, f.nnz, f.value_shape
    (512, 36864, (512, 8, 9, 1))
    """

    p: int
    q: int
    r: int
    s: int
    t: int

    def __post_init__(self) -> None:
        # name the factor in the paper's notation even when a number is bad
        raw = f"factor {self.p} <-({self.r},{self.s},{self.t})- {self.q}"
        for name in ("p", "q", "r", "s", "t"):
            object.__setattr__(self, name, check_int(getattr(self, name), name, where=raw))
        p, q, r, s, t = self.p, self.q, self.r, self.s, self.t
        where = f"factor {self.notation()}"
        if p % (r * t):
            raise ValueError(f"{where}: p={p} must be a multiple of r*t={r * t}")
        if q % (s * t):
            raise ValueError(f"{where}: q={q} must be a multiple of s*t={s * t}")
        if p // (r * t) != q // (s * t):
            raise ValueError(
                f"{where}: the block counts differ, p/(r*t)={p // (r * t)} but "
                f"q/(s*t)={q // (s * t)}; they must be equal"
            )

    # -- derived quantities -------------------------------------------------------
    @property
    def nb(self) -> int:
        """Number of diagonal blocks, ``p/(r t)``."""
        return self.p // (self.r * self.t)

    @property
    def nnz(self) -> int:
        """Number of stored values, ``p s``."""
        return self.p * self.s

    @property
    def value_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(nb, r, s, t)`` of the canonical value array."""
        return (self.nb, self.r, self.s, self.t)

    @property
    def rst(self) -> tuple[int, int, int]:
        """The triple ``(r, s, t)``."""
        return (self.r, self.s, self.t)

    def transpose(self) -> "FactorSpec":
        """Spec of the transposed factor, ``R^(q,p)_(s,r,t)``."""
        return FactorSpec(self.q, self.p, self.s, self.r, self.t)

    def notation(self, unicode: bool = False) -> str:
        """The factor in the paper's notation, ``p <-(r,s,t)- q``."""
        if unicode:
            return f"{self.p} \u2190({self.r},{self.s},{self.t})\u2212 {self.q}"
        return f"{self.p} <-({self.r},{self.s},{self.t})- {self.q}"

    def __str__(self) -> str:
        return self.notation()


_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<triple>\(\s*(?P<r>\d+)\s*,\s*(?P<s>\d+)\s*,\s*(?P<t>\d+)\s*\))"
    r"|(?P<size>\d+)"
    r"|(?P<arrow><-|\u2190|-|\u2212|\u2013|\u2014)"
    r")"
)

# Python's int() refuses decimal strings longer than this; also a sanity bound.
_MAX_DIGITS = 30


def _tokenize(text: str) -> list[tuple[str, object]]:
    tokens: list[tuple[str, object]] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(
                f"Chain.parse: unexpected character {text[pos]!r} at position {pos} in "
                f"{_clip(text)!r}; expected sizes, '(r,s,t)' triples and arrows '<-' / '\u2190'"
            )
        if m.group("triple") is not None:
            digits = [m.group(k) for k in ("r", "s", "t")]
            if any(len(d) > _MAX_DIGITS for d in digits):
                raise ValueError(f"Chain.parse: number too large at position {pos}")
            tokens.append(("triple", tuple(int(d) for d in digits)))
        elif m.group("size") is not None:
            d = m.group("size")
            if len(d) > _MAX_DIGITS:
                raise ValueError(f"Chain.parse: number too large at position {pos}")
            tokens.append(("size", int(d)))
        # arrows and dashes are decoration: ignored
        pos = m.end()
    return tokens


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class Chain(Sequence[FactorSpec]):
    """An immutable chain of DeBut factors, listed in application order.

    ``Chain([f1, f2, ..., fN])`` stands for the product ``D = R_N ... R_2 R_1``:
    ``factors[0]`` is applied to a vector first (the paper's right-most factor).  The
    paper's notation is written output <- input and is what ``str(chain)`` prints.

    Parameters
    ----------
    factors : iterable of FactorSpec or of ``(p, q, r, s, t)`` tuples
        The factors, input side first.

    Raises
    ------
    ValueError
        If the chain is empty, a factor is invalid, or sizes do not chain
        (``q`` of a factor must equal ``p`` of the factor applied before it).

    Notes
    -----
    A chain is *dense* when ``t_1 = 1``, ``t_{i+1} = r_i t_i`` and the last factor is a
    single block (``r_N t_N = p_N``).  Then no entry of the product is forced to zero,
    every entry is the product of exactly one value per factor, ``m = prod r_i`` and
    ``n = prod s_i``.

    Examples
    --------
    >>> c = Chain.parse("16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72")
    >>> c.shape, c.nnz, c.is_dense
    ((16, 72), 512, True)
    >>> c[0]
    FactorSpec(p=96, q=72, r=4, s=3, t=1)
    """

    __slots__ = ("_factors", "_hash")

    def __init__(self, factors: Iterable[FactorSpec | Sequence[int]]) -> None:
        if isinstance(factors, (str, bytes)):
            raise TypeError("Chain(factors): factors must be FactorSpec objects or "
                            "(p, q, r, s, t) tuples; use Chain.parse for a string")
        specs: list[FactorSpec] = []
        for i, f in enumerate(factors):
            if isinstance(f, FactorSpec):
                specs.append(f)
                continue
            try:
                vals = tuple(f)  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(
                    f"Chain(factors): factor {i} must be a FactorSpec or a (p, q, r, s, t) "
                    f"tuple, got {type(f).__name__}"
                ) from None
            if len(vals) != 5:
                raise ValueError(
                    f"Chain(factors): factor {i} must have 5 numbers (p, q, r, s, t), "
                    f"got {len(vals)}"
                )
            try:
                specs.append(FactorSpec(*vals))
            except (TypeError, ValueError) as e:
                raise type(e)(f"Chain(factors): factor {i}: {e}") from None
        if not specs:
            raise ValueError("Chain(factors): a chain needs at least one factor")
        for i in range(1, len(specs)):
            if specs[i].q != specs[i - 1].p:
                raise ValueError(
                    f"Chain(factors): sizes do not chain between factor {i - 1} "
                    f"({specs[i - 1].notation()}) and factor {i} ({specs[i].notation()}): "
                    f"factor {i} takes q={specs[i].q} inputs but factor {i - 1} gives "
                    f"p={specs[i - 1].p} outputs"
                )
        self._factors: tuple[FactorSpec, ...] = tuple(specs)
        self._hash = hash(self._factors)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "Chain":
        """Parse the paper's notation (output <- input).

        Accepts ``512 <-(2,4,256)- 1024 ...``, the Unicode form
        ``512 \u2190(2,4,256)\u2212 1024 ...`` and the whitespace-only form
        ``512 (2,4,256) 1024 ...``.  Sizes and triples must alternate, starting and ending
        with a size.

        Parameters
        ----------
        text : str
            The chain, output size first.

        Returns
        -------
        Chain

        Raises
        ------
        TypeError
            If ``text`` is not a string.
        ValueError
            If the text is malformed or describes an invalid chain.

        Examples
        --------
        >>> Chain.parse("128 (2,2,64) 128 (2,2,32) 128 (2,4,16) 256 (16,25,1) 400").shape
        (128, 400)
        """
        if not isinstance(text, str):
            raise TypeError(f"Chain.parse(text): text must be a str, got {type(text).__name__}")
        tokens = _tokenize(text)
        if not tokens:
            raise ValueError("Chain.parse: empty chain; expected e.g. '16 <-(2,8,1)- 128'")
        if len(tokens) < 3:
            raise ValueError(
                f"Chain.parse: {_clip(text)!r} needs at least 'size (r,s,t) size'"
            )
        for k, (kind, val) in enumerate(tokens):
            want = "size" if k % 2 == 0 else "triple"
            if kind != want:
                raise ValueError(
                    f"Chain.parse: item {k} of {_clip(text)!r} is a {kind} ({val!r}) but a "
                    f"{want} was expected; sizes and (r,s,t) triples must alternate"
                )
        if tokens[-1][0] != "size":
            raise ValueError(f"Chain.parse: {_clip(text)!r} must end with a size")
        sizes = [v for k, v in tokens[0::2]]
        triples = [v for k, v in tokens[1::2]]
        specs = []
        # tokens are output-first: factor between sizes[j] (p) and sizes[j+1] (q)
        for j in range(len(triples) - 1, -1, -1):
            r, s, t = triples[j]  # type: ignore[misc]
            idx = len(triples) - 1 - j
            try:
                specs.append(FactorSpec(sizes[j], sizes[j + 1], r, s, t))  # type: ignore[arg-type]
            except ValueError as e:
                raise ValueError(f"Chain.parse: factor {idx}: {e}") from None
        try:
            return cls(specs)
        except ValueError as e:
            raise ValueError(str(e).replace("Chain(factors)", "Chain.parse")) from None

    @classmethod
    def from_pqrst(cls, rows: Iterable[Sequence[int]]) -> "Chain":
        """Build from ``(p, q, r, s, t)`` rows, input side first.

        This is the format of the DeBut authors' ``R_shapes`` files.

        Examples
        --------
        >>> Chain.from_pqrst([[96, 72, 4, 3, 1], [48, 96, 1, 2, 4],
        ...                   [16, 48, 2, 6, 4], [16, 16, 2, 2, 8]]).shape
        (16, 72)
        """
        return cls(rows)  # type: ignore[arg-type]

    def to_pqrst(self) -> list[tuple[int, int, int, int, int]]:
        """The ``(p, q, r, s, t)`` rows, input side first."""
        return [(f.p, f.q, f.r, f.s, f.t) for f in self._factors]

    @classmethod
    def from_ks(cls, patterns: Iterable[Sequence[int]]) -> "Chain":
        """Build from lazylinop Kronecker-sparse patterns ``(a, b, c, d)``.

        A pattern ``(a, b, c, d)`` is the support ``I_a (x) 1_{b x c} (x) I_d``, i.e. the
        DeBut factor ``(nb, r, s, t) = (a, b, c, d)``.  Patterns are listed left to right,
        output side first (the reverse of our order).

        Examples
        --------
        >>> Chain.from_ks([(1, 2, 2, 2), (2, 2, 2, 1)]) == Chain.parse("4 (2,2,2) 4 (2,2,1) 4")
        True
        """
        specs = []
        pats = list(patterns)
        for i, pat in enumerate(reversed(pats)):
            vals = tuple(pat)
            if len(vals) != 4:
                raise ValueError(f"Chain.from_ks: pattern {len(pats) - 1 - i} must have 4 "
                                 f"numbers (a, b, c, d), got {len(vals)}")
            a, b, c, d = (check_int(v, n, where=f"Chain.from_ks: pattern {len(pats) - 1 - i}")
                          for n, v in zip("abcd", vals))
            specs.append(FactorSpec(a * b * d, a * c * d, b, c, d))
        return cls(specs)

    def to_ks(self) -> list[tuple[int, int, int, int]]:
        """The lazylinop patterns ``(a, b, c, d) = (nb, r, s, t)``, output side first."""
        return [(f.nb, f.r, f.s, f.t) for f in reversed(self._factors)]

    @classmethod
    def butterfly(cls, n: int, radix: int = 2) -> "Chain":
        """The standard butterfly chain of size ``n = radix^L``.

        Factors ``(radix, radix, radix^k)`` for ``k = 0 .. L-1`` in application order:
        radix 2 gives the classic butterfly (Hadamard and the DFT up to a permutation),
        radix 4 the radix-4 chain.

        Raises
        ------
        ValueError
            If ``radix < 2`` or ``n`` is not a power of ``radix`` greater than 1.

        Examples
        --------
        >>> print(Chain.butterfly(8))
        8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8
        """
        n = check_int(n, "n", where="Chain.butterfly")
        radix = check_int(radix, "radix", where="Chain.butterfly")
        if radix < 2:
            raise ValueError(f"Chain.butterfly: radix must be >= 2, got {radix}")
        L, size = 0, 1
        while size < n:
            size *= radix
            L += 1
        if size != n or L == 0:
            raise ValueError(f"Chain.butterfly: n={n} must be a power of radix={radix} "
                             f"greater than 1")
        return cls([FactorSpec(n, n, radix, radix, radix ** k) for k in range(L)])

    # -- sequence protocol ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._factors)

    @overload
    def __getitem__(self, i: int) -> FactorSpec: ...
    @overload
    def __getitem__(self, i: slice) -> "Chain": ...

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Chain(self._factors[i])
        return self._factors[i]

    def __iter__(self) -> Iterator[FactorSpec]:
        return iter(self._factors)

    def __reduce__(self):
        # pickle by value with every protocol (0 and 1 cannot pickle __slots__ alone)
        return (Chain, (self._factors,))

    @property
    def factors(self) -> tuple[FactorSpec, ...]:
        """The factor specs, input side first."""
        return self._factors

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return self._factors == other._factors

    def __hash__(self) -> int:
        return self._hash

    # -- derived quantities -----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)`` of the product: output size of the last factor, input of the first."""
        return (self._factors[-1].p, self._factors[0].q)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Vector sizes from input to output: ``(q_1, p_1, p_2, ..., p_N)``."""
        return (self._factors[0].q,) + tuple(f.p for f in self._factors)

    @property
    def nnz(self) -> int:
        """Total number of stored values (parameters) over all factors."""
        return sum(f.nnz for f in self._factors)

    @property
    def compression(self) -> float:
        """Layer compression ``LC = 1 - nnz / (m n)`` (negative if larger than dense)."""
        m, n = self.shape
        return 1.0 - self.nnz / (m * n)

    def flops(self, batch: int = 1) -> int:
        """Real multiply-adds times two (``2 * nnz * batch``) to apply to ``batch`` vectors.

        For complex dtypes multiply by four for real flops.
        """
        batch = check_int(batch, "batch", where="Chain.flops")
        return 2 * self.nnz * batch

    @property
    def is_dense(self) -> bool:
        """True if no entry of the product is forced to zero (see Notes of :class:`Chain`)."""
        f = self._factors
        if f[0].t != 1:
            return False
        for i in range(1, len(f)):
            if f[i].t != f[i - 1].r * f[i - 1].t:
                return False
        return f[-1].nb == 1

    @property
    def kind(self) -> str:
        """``"monotonic"``, ``"bulging"`` or ``"other"``, from the vector sizes.

        Monotonic: sizes move monotonically from ``n`` to ``m`` (constant counts).
        Bulging: some intermediate size exceeds both ``m`` and ``n``.  This is computed
        from the sizes alone, so it may differ from a label a paper gives a chain.
        """
        sz = self.sizes
        inc = all(a <= b for a, b in zip(sz, sz[1:]))
        dec = all(a >= b for a, b in zip(sz, sz[1:]))
        if inc or dec:
            return "monotonic"
        if max(sz[1:-1]) > max(sz[0], sz[-1]):
            return "bulging"
        return "other"

    # -- derived chains ----------------------------------------------------------------
    def transpose(self) -> "Chain":
        """Chain of the transposed product: reversed order, each factor's r and s swapped."""
        return Chain([f.transpose() for f in reversed(self._factors)])

    @property
    def T(self) -> "Chain":
        """Alias of :meth:`transpose`."""
        return self.transpose()

    # -- printing ------------------------------------------------------------------
    def format(self, unicode: bool = False) -> str:
        """The paper's notation, output <- input (ASCII arrows unless ``unicode``)."""
        arrow = ("\u2190({},{},{})\u2212" if unicode else "<-({},{},{})-")
        parts = [str(self._factors[-1].p)]
        for f in reversed(self._factors):
            parts.append(arrow.format(f.r, f.s, f.t))
            parts.append(str(f.q))
        return " ".join(parts)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"Chain.parse({self.format()!r})"

    def summary(self) -> str:
        """A multi-line description: notation, shape, parameters, compression, kind."""
        m, n = self.shape
        return (
            f"{self.format()}\n"
            f"  shape {m}x{n}, {len(self)} factors, {self.nnz:,} parameters "
            f"(dense {m * n:,}), compression {self.compression:.2%}, "
            f"{'dense' if self.is_dense else 'not dense'}, {self.kind}"
        )


# ---------------------------------------------------------------------------------------
# Chain design
# ---------------------------------------------------------------------------------------

def as_chain(chain: "Chain | str", *, where: str = "chain") -> Chain:
    """A :class:`Chain` from a Chain or a string in the paper's notation.

    The one conversion every function that takes "a chain" uses.

    Raises
    ------
    TypeError
        If ``chain`` is neither a Chain nor a string.
    ValueError
        If the string does not parse (the parser's message, prefixed by ``where``).

    Examples
    --------
    >>> as_chain("4 <-(2,2,2)- 4 <-(2,2,1)- 4").shape
    (4, 4)
    """
    if isinstance(chain, Chain):
        return chain
    if isinstance(chain, str):
        try:
            return Chain.parse(chain)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    raise TypeError(f"{where}: chain must be a Chain or a string in the paper's notation, "
                    f"got {type(chain).__name__}")


def _divisors(n: int) -> list[int]:
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def _largest_prime_factor(n: int) -> int:
    best, d = 1, 2
    while d * d <= n:
        while n % d == 0:
            best, n = d, n // d
        d += 1
    return max(best, n) if n > 1 else best


def _pad_candidates(n: int, max_pad: float, radix: int, limit: int = 6) -> list[int]:
    """``n`` and the first few sizes in ``(n, n*(1+max_pad)]`` with prime factors <= radix."""
    hi = max(n, int(math.floor(n * (1.0 + max_pad))))
    out = [n]
    k = n + 1
    while k <= hi and len(out) < limit:
        if _largest_prime_factor(k) <= radix:
            out.append(k)
        k += 1
    return out


@lru_cache(maxsize=256)
def _dp(M: int, N: int, kind: str, radix: int):
    """Dynamic program for min-parameter dense chains with prod r = M, prod s = N.

    State ``(a, b, left, phase, bulged)``: ``a`` = product of the r used so far, ``b`` =
    product of the s still to use, ``left`` factors to place.  Applying ``(r, s)`` costs
    ``a r b`` values (the factor's ``p s``) and moves to ``(a r, b / s)``.  ``phase`` and
    ``bulged`` track the bulging shape (grow, then shrink, peak above ``max(M, N)``).
    No intermediate size may fall below ``min(M, N)`` (it would cap the product's rank).
    Returns ``go(left) -> (cost, ((r, s), ...)) | None``.
    """
    big, small = max(M, N), min(M, N)
    div_cache: dict[int, list[int]] = {}

    def divs(x: int) -> list[int]:
        d = div_cache.get(x)
        if d is None:
            d = div_cache[x] = [v for v in _divisors(x) if v <= radix]
        return d

    @lru_cache(maxsize=None)
    def go(a: int, b: int, left: int, phase: int, bulged: bool):
        if left == 0:
            if a == M and b == 1 and (kind != "bulging" or bulged):
                return (0, ())
            return None
        best = None
        size = a * b
        for r in divs(M // a):
            for s in divs(b):
                if r == 1 and s == 1:
                    continue
                if kind == "monotonic" and ((M < N and r > s) or (M > N and r < s)
                                            or (M == N and r != s)):
                    continue
                new_size = size // s * r
                if new_size < small:  # a narrower waist would cap the rank
                    continue
                nphase, nbulged = phase, bulged
                if kind == "bulging":
                    if new_size > size and phase == 1:
                        continue
                    if new_size < size:
                        nphase = 1
                    if new_size > big and left > 1:
                        nbulged = True
                sub = go(a * r, b // s, left - 1, nphase, nbulged)
                if sub is None:
                    continue
                cost = a * r * b + sub[0]
                if best is None or cost < best[0]:
                    best = (cost, ((r, s),) + sub[1])
        return best

    return go


def _best_sequence(M: int, N: int, n_factors: int, kind: str, radix: int):
    """Min-parameter ``(r, s)`` sequence of exactly ``n_factors`` factors (or None)."""
    if M == 1 and N == 1:
        return None
    return _dp(M, N, kind, radix)(1, N, n_factors, 0, False)


def _chain_from_rs(rs: Sequence[tuple[int, int]]) -> Chain:
    M = math.prod(r for r, _ in rs)
    N = math.prod(s for _, s in rs)
    specs = []
    a, b, t = 1, N, 1
    for r, s in rs:
        q = a * b
        p = a * r * (b // s)
        specs.append(FactorSpec(p, q, r, s, t))
        a, b, t = a * r, b // s, t * r
    del M
    return Chain(specs)


def design_chain(
    m: int,
    n: int,
    kind: str = "monotonic",
    n_factors: int | None = None,
    *,
    max_radix: int | None = None,
    max_pad: float = 0.25,
    max_factors: int = 16,
) -> Chain:
    """Design a dense DeBut chain of size at least ``(m, n)`` with few parameters.

    Parameters
    ----------
    m, n : int
        Output and input sizes to serve (>= 1).  The chain's own size ``(M, N)`` may be
        larger; a :class:`~debutla.DeBut` operator zero-pads inputs and cuts outputs.
    kind : {"monotonic", "bulging", "any"}
        Monotonic: intermediate sizes move steadily from ``N`` to ``M``.  Bulging: they
        widen beyond ``max(M, N)`` and then narrow.  ``"any"``: no shape constraint.
    n_factors : int, optional
        Exact number of factors.  ``None`` chooses the count that minimises parameters
        (up to ``max_factors``); smaller counts give fewer, larger factors (faster to
        apply, more parameters); ``n_factors=1`` is the dense matrix.
    max_radix : int, optional
        Largest ``r`` or ``s`` of a factor; also bounds the prime factors of padded sizes.
        The radix of a prime ``m`` or ``n`` above it is allowed when no padding is better.
        ``None`` (default) tries 16 and doubles it until a chain exists (a few factors
        for a large matrix need large factors).
    max_pad : float
        Largest relative padding tried for each side (``M <= m (1 + max_pad)``).
    max_factors : int
        Largest factor count tried when ``n_factors`` is None.

    Returns
    -------
    Chain
        A dense chain (``chain.is_dense``) with ``chain.shape >= (m, n)``.

    Raises
    ------
    ValueError
        If an argument is out of range, or no chain of the requested kind and factor count
        exists (for example a bulging chain with a single factor).

    Notes
    -----
    A dense chain is fixed by its sequence of ``(r_i, s_i)``: with ``R_i = r_1 ... r_i``
    and ``S_i = s_i ... s_N``, factor ``i`` is ``R^(p,q)_(r_i, s_i, R_{i-1})`` with
    ``q = R_{i-1} S_i``, and holds ``R_i S_i`` values.  The rule: for every padded size
    pair ``(M, N)`` (sizes in ``[m, m (1 + max_pad)]`` whose prime factors are at most
    ``max_radix``), dynamic programming over ``(R_i, S_{i+1})`` finds the ``(r, s)``
    sequence of the requested length and kind with the fewest values; the best pair
    wins, ties going to less padding.  Monotonic chains need ``r_i <= s_i`` (when
    ``M < N``), ``r_i >= s_i`` (``M > N``) or ``r_i = s_i`` (``M = N``) at every step.
    In every kind no intermediate size falls below ``min(M, N)``, so the structure never
    caps the rank of the product.  Bulging chains have at least two factors, so a
    ``1 x n`` or ``m x 1`` shape (which cannot widen) has no bulging design.  Steps with
    ``r = s = 1`` (a pure diagonal scaling: more values, no mixing) are never used, so
    a larger ``n_factors`` than the sizes' prime factors allow raises ``ValueError``.

    Examples
    --------
    >>> c = design_chain(512, 4608, n_factors=7)
    >>> c.is_dense, c.shape, c.nnz <= 75776
    (True, (512, 4608), True)
    """
    m = check_int(m, "m", where="design_chain")
    n = check_int(n, "n", where="design_chain")
    if kind not in ("monotonic", "bulging", "any"):
        raise ValueError(f"design_chain: kind must be 'monotonic', 'bulging' or 'any', "
                         f"got {kind!r}")
    if max_radix is None:
        radix = 16
        while True:
            try:
                return design_chain(m, n, kind, n_factors, max_radix=radix,
                                    max_pad=max_pad, max_factors=max_factors)
            except ValueError:
                if radix >= max(m, n):
                    raise
                radix *= 2
    max_radix = check_int(max_radix, "max_radix", where="design_chain")
    if max_radix < 2:
        raise ValueError(f"design_chain: max_radix must be >= 2, got {max_radix}")
    max_factors = check_int(max_factors, "max_factors", where="design_chain")
    if n_factors is not None:
        n_factors = check_int(n_factors, "n_factors", where="design_chain")
    if not (isinstance(max_pad, (int, float)) and 0 <= max_pad <= 4):
        raise ValueError(f"design_chain: max_pad must be a number in [0, 4], got {max_pad!r}")

    if n_factors == 1:
        if kind == "bulging":
            raise ValueError("design_chain: a bulging chain needs at least 2 factors")
        return Chain([FactorSpec(m, n, m, n, 1)])

    counts = [n_factors] if n_factors is not None else list(range(1, max_factors + 1))
    best = None
    for M in _pad_candidates(m, max_pad, max_radix):
        for N in _pad_candidates(n, max_pad, max_radix):
            radix = max(max_radix, _largest_prime_factor(M), _largest_prime_factor(N))
            pad = M * N
            for L in counts:
                if L == 1:
                    if kind == "bulging":  # one factor has no intermediate size
                        continue
                    cand = (M * N, ((M, N),))
                else:
                    cand = _best_sequence(M, N, L, kind, radix)
                if cand is None:
                    continue
                key = (cand[0], pad, L)
                if best is None or key < best[0]:
                    best = (key, cand[1])
    if best is None:
        raise ValueError(
            f"design_chain: no dense {kind} chain with "
            f"{'%d factors' % n_factors if n_factors else 'up to %d factors' % max_factors} "
            f"serves {m}x{n} (max_radix={max_radix}, max_pad={max_pad}); try kind='any', "
            f"more factors or a larger max_radix"
        )
    return _chain_from_rs(best[1])


#: The chains of the DeBut paper's tables (Lin et al., NeurIPS 2021), in its notation,
#: by name.  ``Chain.parse(PAPER_CHAINS["vgg_512x4608_mono"])`` gives the VGG-16 CONV
#: chain.  All are dense; ``lenet_conv2_mono1`` is called monotonic by the paper but its
#: sizes bulge (96 > 72), so its ``kind`` is ``"bulging"``.
PAPER_CHAINS: dict[str, str] = {
    "lenet_fc1_mono2": "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(1,2,32)- 256 <-(2,2,16)- 256 "
                       "<-(16,25,1)- 400",
    "lenet_fc1_mono1": "128 <-(2,2,64)- 128 <-(2,2,32)- 128 <-(2,2,16)- 128 <-(2,2,8)- 128 "
                       "<-(8,25,1)- 400",
    "lenet_fc1_bulg1": "128 <-(2,4,64)- 256 <-(2,4,32)- 512 <-(4,5,8)- 640 <-(8,5,1)- 400",
    "lenet_conv2_mono1": "16 <-(2,2,8)- 16 <-(2,6,4)- 48 <-(1,2,4)- 96 <-(4,3,1)- 72",
    "lenet_conv2_bulg1": "16 <-(2,6,8)- 48 <-(1,2,8)- 96 <-(2,2,4)- 96 <-(4,3,1)- 72",
    "lenet_fc2": "64 <-(2,2,32)- 64 <-(2,2,16)- 64 <-(2,2,8)- 64 <-(2,2,4)- 64 <-(2,2,2)- 64 "
                 "<-(2,4,1)- 128",
    "vgg_512x4608_mono": "512 <-(2,4,256)- 1024 <-(2,4,128)- 2048 <-(2,4,64)- 4096 "
                         "<-(2,2,32)- 4096 <-(2,2,16)- 4096 <-(2,2,8)- 4096 <-(8,9,1)- 4608",
    "vgg_512x4608_bulg": "512 <-(2,4,256)- 1024 <-(2,4,128)- 2048 <-(2,4,64)- 4096 "
                         "<-(2,4,32)- 8192 <-(2,2,16)- 8192 <-(16,9,1)- 4608",
    "vgg_512x2304": "512 <-(2,2,256)- 512 <-(2,4,128)- 1024 <-(2,4,64)- 2048 <-(2,2,32)- 2048 "
                    "<-(2,2,16)- 2048 <-(2,2,8)- 2048 <-(8,9,1)- 2304",
    "vgg_64x576": "64 <-(8,9,8)- 72 <-(2,4,4)- 144 <-(1,2,4)- 288 <-(4,8,1)- 576",
    "resnet50_layer4": "512 <-(2,2,256)- 512 <-(2,4,128)- 1024 <-(2,2,64)- 1024 <-(2,2,32)- "
                       "1024 <-(2,2,16)- 1024 <-(2,4,8)- 2048 <-(2,2,4)- 2048 <-(2,2,2)- "
                       "2048 <-(2,2,1)- 2048",
}
