"""DeBut factor specifications and chains.

Pure Python: nothing here touches arrays.  See ``docs/conventions.rst`` (and
DESIGN.md section 1) for the conventions: factors are listed in the order they are
applied to a vector, the paper's notation is written output <- input.
"""

from __future__ import annotations

import math
import operator as _operator
from types import MappingProxyType
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, Mapping, Sequence, overload

from ._validation import check_choice, check_int, check_real

__all__ = ["FactorSpec", "Chain", "as_chain", "design_chain", "candidate_chains",
           "PAPER_CHAINS",
           "MAX_DESIGN_SIZE"]


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
        problem = _broken_rule(self.p, self.q, self.r, self.s, self.t)
        if problem:
            raise ValueError(f"factor {self.notation()}: {problem}")

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


def _broken_rule(p: int, q: int, r: int, s: int, t: int) -> str | None:
    """The divisibility rule a factor ``(p, q, r, s, t)`` of positive ints breaks, if any."""
    if p % (r * t):
        return f"p={p} must be a multiple of r*t={r * t}"
    if q % (s * t):
        return f"q={q} must be a multiple of s*t={s * t}"
    if p // (r * t) != q // (s * t):
        return (f"the block counts differ, p/(r*t)={p // (r * t)} but q/(s*t)={q // (s * t)}; "
                f"they must be equal")
    return None


def _check_links(specs: Sequence[FactorSpec], where: str, label) -> None:
    """Refuse neighbours whose sizes do not chain; ``label(i)`` names factor ``i``."""
    for i in range(1, len(specs)):
        if specs[i].q != specs[i - 1].p:
            raise ValueError(
                f"{where}: sizes do not chain between {label(i - 1)} "
                f"({specs[i - 1].notation()}) and {label(i)} ({specs[i].notation()}): "
                f"{label(i)} takes q={specs[i].q} inputs but {label(i - 1)} gives "
                f"p={specs[i - 1].p} outputs"
            )


def _factor_label(i: int) -> str:
    return f"factor {i}"


_DASHES = "-\u2212\u2013\u2014"  # '-', minus sign, en dash, em dash
_OPEN_ARROW = "\u2190"  # '←'

# Python's int() refuses decimal strings longer than this; also a sanity bound.
_MAX_DIGITS = 30

# A valid chain quoted by error messages and docstrings as an example of the notation.
_EXAMPLE_CHAIN = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"


def _excerpt(text: str, pos: int, width: int = 60) -> str:
    """``text`` (or a window of it around ``pos`` when long), quoted."""
    if len(text) <= width:
        return repr(text)
    lo = max(0, min(pos - width // 2, len(text) - width))
    tail = "..." if lo + width < len(text) else ""
    return repr(("..." if lo else "") + text[lo:lo + width] + tail)


def _at(text: str, pos: int) -> str:
    return f"{_excerpt(text, pos)} at position {pos}"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


class _Scanner:
    """A cursor over the text of :meth:`Chain.parse`; every error names the user's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str, pos: int | None = None) -> ValueError:
        where = _at(self.text, self.pos if pos is None else pos)
        return ValueError(f"Chain.parse: {where}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def unexpected(self, expected: str) -> ValueError:
        c = self.peek()
        if not c:
            return self.fail(f"the text ends where {expected} was expected")
        return self.fail(f"unexpected character {c!r} where {expected} was expected")

    def number(self, expected: str) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self.pos += 1
        digits = self.text[start:self.pos]
        if not digits:
            raise self.unexpected(expected)
        if len(digits) > _MAX_DIGITS:
            raise self.fail(f"number too large ({len(digits)} digits)", start)
        return int(digits)

    def size(self, after: str) -> int:
        self.skip_space()
        c = self.peek()
        if c and c in _DASHES:
            raise self.fail(f"{c!r} before a size: sizes are positive whole numbers, and a "
                            f"dash only closes an arrow '<-(r,s,t)-'")
        if c == "(":
            raise self.fail(f"a size is missing {after}: sizes and (r,s,t) triples must "
                            f"alternate")
        return self.number("a size")

    def triple(self) -> tuple[int, int, int]:
        open_pos = self.pos
        self.pos += 1  # '('
        nums: list[int] = []
        while True:
            self.skip_space()
            if self.peek() == ")" and len(nums) < 3:
                raise self.fail(f"a triple needs 3 numbers (r,s,t), got {len(nums)} in "
                                f"{self.text[open_pos:self.pos + 1]!r}")
            if not self.peek():
                raise self.fail(f"missing ')' closing the triple "
                                f"{self.text[open_pos:self.pos].strip()!r}")
            nums.append(self.number("a number of the triple (r,s,t)"))
            self.skip_space()
            c = self.peek()
            if c == ")":
                if len(nums) != 3:
                    raise self.fail(f"a triple needs 3 numbers (r,s,t), got {len(nums)} in "
                                    f"{self.text[open_pos:self.pos + 1]!r}")
                self.pos += 1
                return (nums[0], nums[1], nums[2])
            if c == ",":
                if len(nums) == 3:
                    raise self.fail(f"a triple needs 3 numbers (r,s,t), got more in "
                                    f"{self.text[open_pos:self.pos + 1]!r}...")
                self.pos += 1
                continue
            if len(nums) == 3 and (not c or c in _DASHES or c.isspace()):
                raise self.fail(f"missing ')' closing the triple "
                                f"{self.text[open_pos:self.pos].strip()!r}")
            raise self.unexpected("',' or ')'")

    def open_arrow(self) -> str:
        """Read '<-' or '←' if present (the empty string if absent)."""
        c = self.peek()
        if c == _OPEN_ARROW:
            self.pos += 1
            return c
        if c == "<":
            nxt = self.text[self.pos + 1: self.pos + 2]
            if not nxt or nxt not in _DASHES:
                raise self.fail("missing '-' after '<': an arrow is written '<-(r,s,t)-'")
            self.pos += 2
            return "<" + nxt
        if c and c in _DASHES:
            raise self.fail(f"missing '<' before {c!r}: an arrow is written '<-(r,s,t)-'")
        return ""


def _scan(text: str) -> tuple[list[int], list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Sizes (output first), triples, and the span of ``size (triple) size`` of each."""
    sc = _Scanner(text)
    sc.skip_space()
    if not sc.peek():
        raise ValueError(f"Chain.parse: empty chain; expected e.g. {_EXAMPLE_CHAIN!r}")
    if sc.peek() == "(" or sc.peek() == _OPEN_ARROW or sc.peek() == "<":
        raise sc.fail("the chain must start with its output size")
    starts = [sc.pos]
    sizes = [sc.size("")]
    ends = [sc.pos]
    triples: list[tuple[int, int, int]] = []
    while True:
        sc.skip_space()
        if not sc.peek():
            break
        arrow_pos = sc.pos
        arrow = sc.open_arrow()
        sc.skip_space()
        if sc.peek() != "(":
            if arrow and not sc.peek():
                raise sc.fail(f"trailing arrow {arrow!r}: a triple '(r,s,t)' and the input "
                              f"size are missing", arrow_pos)
            if not arrow and sc.peek() in "0123456789":
                raise sc.fail(f"a triple '(r,s,t)' is missing between the sizes {sizes[-1]} "
                              f"and {text[sc.pos:].split()[0]!r}")
            raise sc.unexpected("a triple '(r,s,t)'" if arrow else
                                "an arrow '<-(r,s,t)-' or a triple '(r,s,t)'")
        triple_pos = sc.pos
        triples.append(sc.triple())
        shown = text[triple_pos:sc.pos]
        sc.skip_space()
        c = sc.peek()
        closed = bool(c) and c in _DASHES
        if closed:
            sc.pos += 1
        if arrow and not closed:
            raise sc.fail(f"missing '-' after {shown!r}: the arrow opened with {arrow!r} "
                          f"must close, as in '<-(r,s,t)-'")
        if closed and not arrow:
            raise sc.fail(f"missing '<-' before {shown!r}: an arrow is written "
                          f"'<-(r,s,t)-'", triple_pos)
        sc.skip_space()
        if not sc.peek():
            raise sc.fail(f"the chain must end with a size: the input size after "
                          f"{text[arrow_pos:sc.pos].strip()!r} is missing")
        starts.append(sc.pos)
        sizes.append(sc.size(f"after {shown!r}"))
        ends.append(sc.pos)
    if not triples:
        raise ValueError(f"Chain.parse: {_excerpt(text, 0)} needs at least "
                         f"'size (r,s,t) size', e.g. {_EXAMPLE_CHAIN!r}")
    spans = [(starts[j], ends[j + 1]) for j in range(len(triples))]
    return sizes, triples, spans


def _slice_text(s: slice) -> str:
    def part(v):
        return "" if v is None else str(v)
    text = f"{part(s.start)}:{part(s.stop)}"
    return text if s.step is None else f"{text}:{part(s.step)}"


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
        _check_links(specs, "Chain(factors)", _factor_label)
        self._factors: tuple[FactorSpec, ...] = tuple(specs)
        self._hash = hash(self._factors)

    @classmethod
    def _linked(cls, specs: Sequence[FactorSpec], where: str, label=_factor_label) -> "Chain":
        """A chain of valid specs whose links are checked with errors naming ``where``."""
        _check_links(specs, where, label)
        chain = cls.__new__(cls)
        chain._factors = tuple(specs)
        chain._hash = hash(chain._factors)
        return chain

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "Chain":
        """Parse the paper's notation (output <- input).

        Accepts ``512 <-(2,4,256)- 1024 ...``, the Unicode form
        ``512 \u2190(2,4,256)\u2212 1024 ...`` and the whitespace-only form
        ``512 (2,4,256) 1024 ...``.  Sizes and triples must alternate, starting and ending
        with a size.  A triple is either bare, ``(r,s,t)``, or a whole arrow: an opening
        ``<-`` (or ``\u2190``) and a closing dash (``-``, ``\u2212``, en or em dash) around
        it; half an arrow, a missing ``)``, a trailing arrow and a dash before a size
        (``-4``) are errors.  Sizes and ``r, s, t`` are whole numbers written in digits.

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
            If the text is malformed or describes an invalid chain.  The message quotes
            the text (a window of it when long) and the position of the problem; a factor
            is named by its index in application order, as ``chain[i]`` (``factor 0`` is
            the right-most triple), followed by its part of the text and its place
            counted from the left.

        Examples
        --------
        >>> Chain.parse("128 (2,2,64) 128 (2,2,32) 128 (2,4,16) 256 (16,25,1) 400").shape
        (128, 400)
        """
        if not isinstance(text, str):
            raise TypeError(f"Chain.parse(text): text must be a str, got {type(text).__name__}")
        sizes, triples, spans = _scan(text)
        n = len(triples)
        specs = []
        for j in range(n - 1, -1, -1):  # the right-most triple is applied first
            shown = " ".join(text[spans[j][0]:spans[j][1]].split())
            where = (f"Chain.parse: factor {n - 1 - j} in application order ({shown!r}, the "
                     f"{_ordinal(j + 1)} triple from the left)")
            vals = (sizes[j], sizes[j + 1]) + triples[j]
            for name, v in zip("pqrst", vals):
                check_int(v, name, where=where)
            problem = _broken_rule(*vals)
            if problem:
                raise ValueError(f"{where}: {problem}")
            specs.append(FactorSpec(*vals))
        return cls._linked(specs, "Chain.parse")  # neighbours share a size: they chain

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
        where = "Chain.from_ks"
        try:
            pats = list(patterns)
        except TypeError:
            raise TypeError(f"{where}: patterns must be an iterable of (a, b, c, d) "
                            f"tuples, got {type(patterns).__name__}") from None
        specs = []
        for k in range(len(pats) - 1, -1, -1):  # output first: reverse
            pat = pats[k]
            try:
                vals = tuple(pat)
            except TypeError:
                raise TypeError(f"{where}: pattern {k} must be a sequence of 4 integers "
                                f"(a, b, c, d), got {pat!r}") from None
            if len(vals) != 4:
                raise ValueError(f"{where}: pattern {k} must have 4 numbers (a, b, c, d), "
                                 f"got {len(vals)}")
            a, b, c, d = (check_int(v, n, where=f"{where}: pattern {k}")
                          for n, v in zip("abcd", vals))
            specs.append(FactorSpec(a * b * d, a * c * d, b, c, d))
        if not specs:
            raise ValueError(f"{where}: a chain needs at least one pattern")
        return cls._linked(specs, where, lambda i: f"pattern {len(specs) - 1 - i}")

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
        """``chain[i]``: a :class:`FactorSpec`; ``chain[a:b]``: a :class:`Chain`.

        Indices count in application order (``chain[0]`` is applied first).  A slice
        gives the sub-chain of the factors it selects; as a :class:`Chain` cannot be
        empty, a slice that selects no factor (``chain[5:5]``) raises ``ValueError``
        (slices never raise ``IndexError``, as the sequence protocol wants), and so
        does a strided slice whose factors do not chain.

        Raises
        ------
        IndexError
            If an integer index is out of range.
        TypeError
            If the index is neither an integer nor a slice.
        ValueError
            If a slice selects no factor, or factors that do not chain.

        Examples
        --------
        >>> c = Chain.butterfly(8)
        >>> c[0], len(c[1:])
        (FactorSpec(p=8, q=8, r=2, s=2, t=1), 2)
        """
        n = len(self._factors)
        if isinstance(i, slice):
            where = f"Chain[{_slice_text(i)}]"
            picked = self._factors[i]
            if not picked:
                raise ValueError(f"{where}: the slice selects no factor of this {n}-factor "
                                 f"chain, and a chain needs at least one factor")
            return Chain._linked(picked, where, lambda k: f"factor {k} of the slice")
        if isinstance(i, bool) or not hasattr(type(i), "__index__"):
            raise TypeError(f"Chain indices must be integers or slices, got "
                            f"{type(i).__name__}")
        k = _operator.index(i)
        if not -n <= k < n:
            raise IndexError(f"Chain index {k} is out of range for a chain of {n} factors "
                             f"(valid: {-n} to {n - 1})")
        return self._factors[k]

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



#: The largest ``m`` or ``n`` :func:`design_chain` accepts (a vector of this size in
#: float64 already takes 32 GiB).
MAX_DESIGN_SIZE = 2**32

#: Work allowance of one :func:`design_chain` call, in ``(r, s)`` steps examined by its
#: dynamic program; see design_chain's Notes.
_DESIGN_WORK = 300_000

#: Primes a padded size may contain (those up to the default radix 16).
_PAD_PRIMES = (2, 3, 5, 7, 11, 13)


class _OutOfWork(Exception):
    """The design search spent its work allowance (internal: design_chain answers it)."""


class _Work:
    """A countdown of dynamic-programming steps shared by one design_chain call."""

    __slots__ = ("left",)

    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise _OutOfWork


@lru_cache(maxsize=1024)
def _prime_factors(n: int) -> tuple[int, ...]:
    """The prime factors of ``n >= 1`` with multiplicity, ascending (trial division).

    At most ``sqrt(n) / 2`` divisions: about 0.05 s for ``n`` near ``5 * 2**32``, the
    largest padded size :func:`design_chain` can meet.
    """
    out = []
    while n % 2 == 0:
        out.append(2)
        n //= 2
    d = 3
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 2
    if n > 1:
        out.append(n)
    return tuple(out)


def _steps_needed(x: int, radix: int) -> int:
    """The fewest factors of at most ``radix`` whose product is ``x``: ceil(log_radix x)."""
    k, v = 0, 1
    while v < x:
        v *= radix
        k += 1
    return k


def _small_divisors(x: int, primes: tuple[int, ...], bound: int) -> list[int]:
    """The divisors of ``x`` up to ``bound``, ascending; ``primes`` holds x's primes."""
    divs = [1]
    for p in primes:
        e, y = 0, x
        while y % p == 0:
            y //= p
            e += 1
        more = []
        for d in divs:
            for _ in range(e):
                d *= p
                if d > bound:
                    break
                more.append(d)
        divs += more
    return sorted(divs)


@lru_cache(maxsize=256)
def _pad_candidates(n: int, max_pad: float, primes: tuple[int, ...],
                    limit: int = 5) -> tuple[int, ...]:
    """``n`` and the ``limit`` smallest sizes in ``(n, n (1 + max_pad)]`` whose prime
    factors are all in ``primes`` (which starts with 2).

    Generated from the primes (a walk over exponents), not by testing every size.
    """
    hi = max(n, math.floor(n * (1.0 + max_pad)))
    found: list[int] = []

    def walk(k: int, value: int) -> None:
        if k == 0:  # the power of two: value * 2**e in (n, hi]
            v = value << max(0, (n // value).bit_length() - 1)
            while v <= hi:
                if v > n:
                    found.append(v)
                v <<= 1
            return
        while value <= hi:
            walk(k - 1, value)
            value *= primes[k]

    walk(len(primes) - 1, 1)
    return (n,) + tuple(sorted(found)[:limit])


def _dp(M: int, N: int, kind: str, radix: int, work: _Work):
    """Dynamic program for min-parameter dense chains with prod r = M, prod s = N.

    State ``(a, b, left, phase, bulged)``: ``a`` = product of the r used so far, ``b`` =
    product of the s still to use, ``left`` factors to place.  Applying ``(r, s)`` costs
    ``a r b`` values (the factor's ``p s``) and moves to ``(a r, b / s)``.  ``phase`` and
    ``bulged`` track the bulging shape (grow, then shrink, peak above ``max(M, N)``).
    No intermediate size may fall below ``min(M, N)`` (it would cap the product's rank).
    Every state spends its number of ``(r, s)`` steps from ``work``.
    Returns ``go(left) -> (cost, ((r, s), ...)) | None``.
    """
    big, small = max(M, N), min(M, N)
    primes_m = tuple(sorted(set(_prime_factors(M))))
    primes_n = tuple(sorted(set(_prime_factors(N))))
    divs_m: dict[int, list[int]] = {}
    divs_n: dict[int, list[int]] = {}
    omega: dict[int, int] = {}
    memo: dict[tuple, tuple | None] = {}
    moves: dict[tuple[int, int], list[tuple]] = {}
    fewest_steps: dict[int, int] = {}

    def n_primes(x: int) -> int:  # prime factors of a divisor, with multiplicity
        k = omega.get(x)
        if k is None:
            k = omega[x] = len(_prime_factors(x))
        return k

    def needed(x: int) -> int:
        k = fewest_steps.get(x)
        if k is None:
            k = fewest_steps[x] = _steps_needed(x, radix)
        return k

    def steps_from(a: int, b: int) -> list[tuple]:
        """The allowed ``(r, s)`` steps from ``(a, b)``, with what the search needs."""
        key = (a, b)
        out = moves.get(key)
        if out is not None:
            return out
        rs = divs_m.get(M // a)
        if rs is None:
            rs = divs_m[M // a] = _small_divisors(M // a, primes_m, radix)
        ss = divs_n.get(b)
        if ss is None:
            ss = divs_n[b] = _small_divisors(b, primes_n, radix)
        work.spend(len(rs) * len(ss))
        size = a * b
        out = []
        for r in rs:
            for s in ss:
                if r == 1 and s == 1:
                    continue
                if kind == "monotonic" and ((M < N and r > s) or (M > N and r < s)
                                            or (M == N and r != s)):
                    continue
                new_size = size // s * r
                if new_size < small:  # a narrower waist would cap the rank
                    continue
                na, nb = a * r, b // s
                # fewest and most steps still possible after this one
                fewest = max(needed(M // na), needed(nb))
                most = n_primes(M // na) + n_primes(nb)
                out.append((r, s, na, nb, new_size, a * r * b, fewest, most))
        moves[key] = out
        return out

    def go(a: int, b: int, left: int, phase: int, bulged: bool):
        if left == 0:
            if a == M and b == 1 and (kind != "bulging" or bulged):
                return (0, ())
            return None
        if kind == "bulging" and phase == 1 and not bulged:
            return None  # shrinking without having bulged: it never will
        key = (a, b, left, phase, bulged)
        if key in memo:
            return memo[key]
        steps = steps_from(a, b)
        work.spend(len(steps))
        best = None
        size = a * b
        for r, s, na, nb, new_size, cost, fewest, most in steps:
            if not fewest <= left - 1 <= most:
                continue
            nphase, nbulged = phase, bulged
            if kind == "bulging":
                if new_size > size and phase == 1:
                    continue
                if new_size < size:
                    nphase = 1
                if new_size > big and left > 1:
                    nbulged = True
            sub = go(na, nb, left - 1, nphase, nbulged)
            if sub is None:
                continue
            cost += sub[0]
            if best is None or cost < best[0]:
                best = (cost, ((r, s),) + sub[1])
        memo[key] = best
        return best

    def best_of(n_factors: int):
        if M == 1 and N == 1:
            return None
        return go(1, N, n_factors, 0, False)

    return best_of


def _chain_from_rs(rs: Sequence[tuple[int, int]]) -> Chain:
    N = math.prod(s for _, s in rs)
    specs = []
    a, b, t = 1, N, 1
    for r, s in rs:
        q = a * b
        p = a * r * (b // s)
        specs.append(FactorSpec(p, q, r, s, t))
        a, b, t = a * r, b // s, t * r
    return Chain(specs)


def _design(m: int, n: int, kind: str, n_factors: int | None, max_radix: int,
            max_pad: float, max_factors: int, work: _Work) -> Chain | None:
    """The best chain for one radix bound, or None if none exists.

    Padded size pairs are searched from the least padding up; when ``work`` runs out
    the best chain found so far is returned, or ``_OutOfWork`` raised if the search of
    the unpadded pair ``(m, n)`` was not finished.
    """
    primes = tuple(p for p in _PAD_PRIMES if p <= max_radix)
    pairs = sorted(((M, N) for M in _pad_candidates(m, max_pad, primes)
                    for N in _pad_candidates(n, max_pad, primes)),
                   key=lambda mn: (mn[0] * mn[1], mn))
    best = None
    for M, N in pairs:
        # every factor costs (its input size >= min(M, N)) * r_i, and also * s_i, and a
        # sum of factors r_i of M is at least the sum of M's prime factors: a lower bound
        bound = min(M, N) * max(sum(_prime_factors(M)), sum(_prime_factors(N)))
        if best is not None and bound > best[0][0]:
            continue
        radix = max(max_radix, _prime_factors(M)[-1] if M > 1 else 1,
                    _prime_factors(N)[-1] if N > 1 else 1)
        most = max(1, len(_prime_factors(M)) + len(_prime_factors(N)))
        counts = [n_factors] if n_factors is not None else range(1, min(max_factors, most) + 1)
        search = _dp(M, N, kind, radix, work)
        try:
            for L in counts:
                if L == 1:
                    if kind == "bulging":  # one factor has no intermediate size
                        continue
                    cand = (M * N, ((M, N),))
                else:
                    cand = search(L)
                if cand is None:
                    continue
                key = (cand[0], M * N, L)
                if best is None or key < best[0]:
                    best = (key, cand[1])
        except _OutOfWork:
            if (M, N) == pairs[0]:  # the unpadded size must be searched to the end
                raise
            break
    return None if best is None else _chain_from_rs(best[1])


def design_chain(
    m: int,
    n: int,
    kind: str = "monotonic",
    n_factors: int | None = None,
    *,
    max_radix: int | None = None,
    max_pad: float = 0.25,
    max_factors: int = 16,
    max_params: int | None = None,
) -> Chain:
    """Design a dense DeBut chain of size at least ``(m, n)`` with few parameters.

    Parameters
    ----------
    m, n : int
        Output and input sizes to serve, from 1 to :data:`MAX_DESIGN_SIZE` (``2**32``).
        The chain's own size ``(M, N)`` may be larger; a :class:`~debutla.DeBut`
        operator zero-pads inputs and cuts outputs.
    kind : {"monotonic", "bulging", "any"}
        Monotonic: intermediate sizes move steadily from ``N`` to ``M``.  Bulging: they
        widen beyond ``max(M, N)`` and then narrow.  ``"any"``: no shape constraint.
    n_factors : int, optional
        Exact number of factors.  ``None`` chooses the count that minimises parameters
        (up to ``max_factors``); smaller counts give fewer, larger factors (faster to
        apply, more parameters); ``n_factors=1`` is the dense matrix.
    max_radix : int, optional
        Largest ``r`` or ``s`` of a factor; padded sizes have prime factors at most
        ``min(max_radix, 13)``.
        The radix of a prime ``m`` or ``n`` above it is allowed when no padding is better.
        ``None`` (default) tries 16 and doubles it until a chain exists (a few factors
        for a large matrix need large factors).
    max_pad : float
        Largest relative padding tried for each side (``M <= m (1 + max_pad)``); any
        real number in ``[0, 4]`` (NumPy scalars included).
    max_factors : int
        Largest factor count tried when ``n_factors`` is None.
    max_params : int, optional
        A parameter budget: return the chain with the *most* values (the most
        expressive) that holds at most ``max_params`` values, among
        :func:`candidate_chains` (ties: fewer factors).  The other arguments are then
        not used.  ``debutla.factorize(W, "auto", max_params=N)`` goes further: it fits
        the best candidates and keeps the most accurate.

    Returns
    -------
    Chain
        A dense chain (``chain.is_dense``) with ``chain.shape >= (m, n)``.

    Raises
    ------
    TypeError
        If an argument is of the wrong kind (``m=1.5``, ``max_pad="0.1"``).
    ValueError
        If an argument is out of range, no chain of the requested kind and factor count
        exists (for example a bulging chain with a single factor), or the search for the
        unpadded size ``(m, n)`` does not finish within the work allowance (see Notes).

    Notes
    -----
    A dense chain is fixed by its sequence of ``(r_i, s_i)``: with ``R_i = r_1 ... r_i``
    and ``S_i = s_i ... s_N``, factor ``i`` is ``R^(p,q)_(r_i, s_i, R_{i-1})`` with
    ``q = R_{i-1} S_i``, and holds ``R_i S_i`` values.  The rule: for every padded size
    pair ``(M, N)`` (``m`` itself and the five smallest sizes in ``(m, m (1 + max_pad)]``
    whose prime factors are at most ``min(max_radix, 13)``; likewise for ``n``), dynamic
    programming over ``(R_i, S_{i+1})`` finds the ``(r, s)`` sequence of the requested
    length and kind with the fewest values; the best pair wins, ties going to less
    padding.  Monotonic chains need ``r_i <= s_i`` (when
    ``M < N``), ``r_i >= s_i`` (``M > N``) or ``r_i = s_i`` (``M = N``) at every step.
    In every kind no intermediate size falls below ``min(M, N)``, so the structure never
    caps the rank of the product.  Bulging chains have at least two factors, so a
    ``1 x n`` or ``m x 1`` shape (which cannot widen) has no bulging design.  Steps with
    ``r = s = 1`` (a pure diagonal scaling: more values, no mixing) are never used, so
    a larger ``n_factors`` than the sizes' prime factors allow raises ``ValueError``.

    Time is bounded: the search examines at most a fixed number of ``(r, s)`` steps
    (300,000: 0.1 to 0.4 s on an idle core, about a second on a busy one) for the whole
    call.  Pairs are searched from the least padding up, and a pair is skipped when a
    lower bound on its cost (``min(M, N)`` times the larger sum of prime factors of
    ``M`` and ``N``) exceeds the best chain found.  If the allowance runs out after the
    unpadded pair ``(m, n)`` was searched, the best chain found so far is returned (it
    is optimal for the unpadded size, perhaps not over all padded sizes); if it runs
    out before, ``ValueError`` says so.  Sizes up to about 300 are searched in full
    (measured: at most 250,000 steps); larger ones, and the kinds ``"any"`` and
    ``"bulging"`` from about a thousand, may stop early.

    Examples
    --------
    >>> c = design_chain(512, 4608, n_factors=7)
    >>> c.is_dense, c.shape, c.nnz <= 75776
    (True, (512, 4608), True)
    """
    m = check_int(m, "m", where="design_chain", max=MAX_DESIGN_SIZE)
    n = check_int(n, "n", where="design_chain", max=MAX_DESIGN_SIZE)
    if max_params is not None:
        return candidate_chains(m, n, max_params=max_params,
                                where="design_chain(max_params)")[0]
    return _design_chain(m, n, kind, n_factors, max_radix=max_radix, max_pad=max_pad,
                         max_factors=max_factors)


def _design_chain(m: int, n: int, kind: str = "monotonic", n_factors: int | None = None,
                  *, max_radix: int | None = None, max_pad: float = 0.25,
                  max_factors: int = 16) -> Chain:
    """:func:`design_chain` without a budget (``m`` and ``n`` already checked)."""
    kind = check_choice(kind, "kind", ("monotonic", "bulging", "any"), where="design_chain")
    if n_factors is not None:
        n_factors = check_int(n_factors, "n_factors", where="design_chain")
    if max_radix is not None:
        max_radix = check_int(max_radix, "max_radix", where="design_chain", min=2)
    max_pad = check_real(max_pad, "max_pad", where="design_chain", min=0, max=4)
    max_factors = check_int(max_factors, "max_factors", where="design_chain")

    if n_factors == 1:
        if kind == "bulging":
            raise ValueError("design_chain: a bulging chain needs at least 2 factors")
        return Chain([FactorSpec(m, n, m, n, 1)])

    work = _Work(_DESIGN_WORK)
    radix = 16 if max_radix is None else max_radix
    while True:
        try:
            found = _design(m, n, kind, n_factors, radix, max_pad, max_factors, work)
        except _OutOfWork:
            raise ValueError(
                f"design_chain: the search for a chain (kind={kind!r}) serving {m}x{n} "
                f"reached its "
                f"work limit ({_DESIGN_WORK:,} steps) before finding one; give n_factors, "
                f"a smaller max_radix or max_pad, or build the chain yourself (e.g. "
                f"Chain.butterfly or Chain.parse)") from None
        if found is not None:
            return found
        if max_radix is not None or radix >= max(m, n):
            break
        radix *= 2  # a few factors for a large matrix need large factors
    counts = f"{n_factors} factors" if n_factors else f"up to {max_factors} factors"
    radix_text = (f"max_radix={max_radix}" if max_radix is not None
                  else f"max_radix grown up to {radix}")
    raise ValueError(
        f"design_chain: no dense {kind} chain with {counts} serves {m}x{n} ({radix_text}, "
        f"max_pad={max_pad}); try kind='any', more factors or a larger max_radix")


def _all_divisors(x: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(x) + 1) if x % d == 0]
    return sorted(set(small + [x // d for d in small]))


def _two_factor(m: int, n: int, r1: int, s1: int) -> Chain:
    """The dense chain ``(r1, s1), (m / r1, n / s1)`` (a Monarch-like pair)."""
    r2, s2 = m // r1, n // s1
    return Chain.from_pqrst([(r1 * s2, n, r1, s1, 1), (m, r1 * s2, r2, s2, r1)])


def candidate_chains(m: int, n: int, *, max_params: int | None = None,
                     max_factors: int = 8,
                     where: str = "candidate_chains(max_params)") -> list[Chain]:
    """Dense chains that serve an ``m x n`` matrix, most parameters first.

    Parameters
    ----------
    m, n : int
        The matrix shape (each chain's size is at least this; some are padded).
    max_params : int, optional
        Keep only chains with at most this many values.
    max_factors : int
        Largest factor count asked of :func:`~debutla.design_chain`.
    where : str
        How an impossible budget is named in the error (the caller's argument).

    Returns
    -------
    list of Chain
        Without duplicates, sorted by decreasing ``nnz`` (ties: fewer factors first).

    Raises
    ------
    ValueError
        If ``max_params`` is smaller than every candidate (the message gives the
        smallest).

    Notes
    -----
    The candidates are: the minimum-parameter monotonic chain of every factor count
    ``2 .. max_factors`` (:func:`~debutla.design_chain`, which also pads), the same with
    the radix capped at 2 and 4 (more factors, fewer values), every two-factor dense
    chain ``(r_1, s_1), (m / r_1, n / s_1)`` whose middle size ``r_1 n / s_1`` is at least
    ``min(m, n)`` and which is smaller than the dense matrix (these fill the range
    between the two-factor minimum and the dense matrix), and the dense matrix itself
    (one factor).  Bulging designs are not listed: designing them costs about a second
    each at ``768 x 3072``.

    Examples
    --------
    >>> cs = candidate_chains(16, 72, max_params=600)
    >>> all(c.nnz <= 600 for c in cs), cs[0].nnz >= cs[-1].nnz
    (True, True)
    """
    m = check_int(m, "m", where="candidate_chains")
    n = check_int(n, "n", where="candidate_chains")
    max_factors = check_int(max_factors, "max_factors", where="candidate_chains")
    if max_params is not None:
        max_params = check_int(max_params, "max_params", where=where)
    found: dict[Chain, None] = {Chain.from_pqrst([(m, n, m, n, 1)]): None}
    for k in range(2, max_factors + 1):
        for radix in (None, 4, 2):
            try:
                found[_design_chain(m, n, "monotonic", k, max_radix=radix)] = None
            except ValueError:  # no chain of this count and radix
                continue
    low = min(m, n)
    for r1 in _all_divisors(m):
        for s1 in _all_divisors(n):
            if (r1, s1) in ((1, 1), (m, n)) or r1 * (n // s1) < low:
                continue
            if r1 * n + m * (n // s1) < m * n:  # else the dense matrix is smaller
                found[_two_factor(m, n, r1, s1)] = None
    out = sorted(found, key=lambda c: (-c.nnz, len(c)))
    if max_params is not None:
        fit = [c for c in out if c.nnz <= max_params]
        if not fit:
            raise ValueError(
                f"{where}: no chain serving {m}x{n} has at most "
                f"{max_params} values; the smallest candidate has {out[-1].nnz} "
                f"('{out[-1]}')")
        out = fit
    return out



#: The chains of the DeBut paper's tables (Lin et al., NeurIPS 2021), in its notation,
#: by name.  ``Chain.parse(PAPER_CHAINS["vgg_512x4608_mono"])`` gives the VGG-16 CONV
#: chain.  All are dense; ``lenet_conv2_mono1`` is called monotonic by the paper but its
#: sizes bulge (96 > 72), so its ``kind`` is ``"bulging"``.
#: Read-only (a ``types.MappingProxyType``): copy it with ``dict(PAPER_CHAINS)`` to edit.
PAPER_CHAINS: Mapping[str, str] = MappingProxyType({
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
})
