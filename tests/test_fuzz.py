"""Fuzz suite (slow): only the documented errors may escape.

- ``Chain.parse`` on hypothesis-generated text (grammar-biased, arbitrary Unicode, and
  mutations of valid chains) returns a Chain or raises ``ValueError``; non-strings raise
  ``TypeError``.
- ``load`` on byte-mutated ``.npz`` files (stored and compressed members; replaced,
  inserted and deleted bytes, truncations; positions biased towards zip and ``.npy``
  headers) returns a DeBut or raises ``DeButFileError`` (a ``ValueError``).

Each test runs at least 10,000 cases.
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debutla import Chain, DeBut, DeButFileError, load, save

pytestmark = pytest.mark.slow

N_CASES = 10_000
fuzz_settings = settings(max_examples=N_CASES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))

VALID = [
    "512 <-(2,4,256)- 1024 <-(2,4,128)- 2048 <-(2,4,64)- 4096 <-(2,2,32)- 4096 "
    "<-(2,2,16)- 4096 <-(2,2,8)- 4096 <-(8,9,1)- 4608",
    "16 \u2190(2,2,8)\u2212 16 \u2190(2,6,4)\u2212 48 \u2190(1,2,4)\u2212 96 "
    "\u2190(4,3,1)\u2212 72",
    "128 (2,2,64) 128 (2,2,32) 128 (1,2,32) 256 (2,2,16) 256 (16,25,1) 400",
    "4 <-(2,2,2)- 4 <-(2,2,1)- 4",
    "1 <-(1,1,1)- 1",
]
GRAMMAR = "0123456789(),<-\u2190\u2212\u2013\u2014 \t\n"


_DASH = "[-\u2212\u2013\u2014]"
_TRIPLE = r"\(\d+,\d+,\d+\)"
# the documented grammar (issue 10), written independently of the parser: whitespace
# aside, sizes and triples alternate, and a triple is bare or a whole arrow
ACCEPTED = re.compile(rf"\d+(?:(?:(?:<{_DASH}|\u2190){_TRIPLE}{_DASH}|{_TRIPLE})\d+)+")


def _check_parse(text):
    try:
        c = Chain.parse(text)
    except ValueError:
        return
    # anything accepted is a valid chain that prints and parses back to itself
    assert isinstance(c, Chain) and len(c) >= 1
    assert Chain.parse(str(c)) == c
    # ... and follows the documented grammar (no dropped '-' or half arrows)
    assert ACCEPTED.fullmatch("".join(text.split())), text


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(VALID), st.data())
def test_dropping_an_arrow_part_or_parenthesis_is_always_an_error(text, data):
    # issue 10: a missing '-', '<' or ')' was silently accepted (dashes were decoration)
    spots = [i for i, ch in enumerate(text) if ch in "<-\u2190\u2212()"]
    i = data.draw(st.sampled_from(spots))
    with pytest.raises(ValueError, match="missing|unexpected|triple|size"):
        Chain.parse(text[:i] + text[i + 1:])


@st.composite
def mutated_chain_text(draw):
    text = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        i = draw(st.integers(0, max(0, len(text) - 1)))
        ch = draw(st.one_of(st.sampled_from(GRAMMAR), st.characters()))
        if op == "replace" and text:
            text[i] = ch
        elif op == "insert":
            text.insert(i, ch)
        elif text:
            del text[i]
    return "".join(text)


parse_inputs = st.one_of(
    st.text(alphabet=GRAMMAR, max_size=80),
    st.text(alphabet=st.one_of(st.sampled_from(GRAMMAR), st.characters()), max_size=60),
    st.text(max_size=40),
    mutated_chain_text(),
    st.lists(st.tuples(st.integers(0, 10**6),
                       st.tuples(st.integers(-3, 300), st.integers(-3, 300),
                                 st.integers(-3, 300))),
             min_size=0, max_size=5).map(
        lambda xs: " ".join(f"{a} ({r},{s},{t})" for a, (r, s, t) in xs)
        + " " + str(len(xs) * 7)),
)


@fuzz_settings
@given(parse_inputs)
def test_parse_fuzz_raises_only_value_error(text):
    _check_parse(text)


@settings(max_examples=500, deadline=None, database=None)
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=30),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(), st.text())))
def test_parse_fuzz_non_strings_raise_type_error(obj):
    with pytest.raises(TypeError):
        Chain.parse(obj)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------

def _base_files(tmp):
    """Valid files: several chains/dtypes, stored and deflate-compressed."""
    ops = [
        DeBut.random("4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 12", seed=1,
                     dtype=np.complex64, shape=(3, 10)),
        DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=2),
        DeBut.random("2 <-(2,3,1)- 3", seed=3, dtype=np.float32),
    ]
    files = []
    for i, op in enumerate(ops):
        p = tmp / f"base{i}.npz"
        save(op, p)
        files.append(p.read_bytes())
        q = tmp / f"base{i}c.npz"
        with zipfile.ZipFile(p) as src, zipfile.ZipFile(q, "w") as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
        files.append(q.read_bytes())
    return files


def _hot_spots(raw: bytes) -> list[int]:
    """Offsets of zip local headers, .npy headers and the central directory."""
    spots = [len(raw) - 22]  # end of central directory record
    i = raw.find(b"PK")
    while i != -1:
        spots.append(i)
        i = raw.find(b"PK", i + 2)
    i = raw.find(b"\x93NUMPY")
    while i != -1:
        spots.append(i)
        i = raw.find(b"\x93NUMPY", i + 6)
    return spots


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzbase")
    files = _base_files(tmp)
    for raw in files:  # the fuzz starts from files that load
        p = tmp / "check.npz"
        p.write_bytes(raw)
        load(p)
    return files, [_hot_spots(r) for r in files], tmp_path_factory.mktemp("fuzz") / "m.npz"


_EDITS = st.integers(1, 4)
_KIND = st.sampled_from(["replace", "replace", "bitflip", "insert", "delete", "truncate",
                         "digit"])
_POS = st.integers(0, 2**24)
_OFFSET = st.integers(-8, 120)
_BYTE = st.integers(0, 255)
_BIT = st.integers(0, 7)
_INSERT = st.binary(min_size=1, max_size=8)
_DELETE = st.integers(1, 8)
_DIGIT = st.sampled_from(b"0123456789")


def _mutate(draw, raw: bytearray, spots) -> bytearray:
    """Apply 1 to 4 byte edits to ``raw`` in place, half of them near ``spots``.

    The strategies are module constants (positions taken modulo the length), which
    keeps 10,000 cases fast.
    """
    for _ in range(draw(_EDITS)):
        n = len(raw)
        if n == 0:
            break
        if spots and draw(st.booleans()):
            where = spots[draw(_POS) % len(spots)] + draw(_OFFSET)
            where = min(max(where, 0), n - 1)
        else:
            where = draw(_POS) % n
        kind = draw(_KIND)
        if kind == "replace":
            raw[where] = draw(_BYTE)
        elif kind == "bitflip":
            raw[where] ^= 1 << draw(_BIT)
        elif kind == "insert":
            raw[where:where] = draw(_INSERT)
        elif kind == "delete":
            del raw[where: where + draw(_DELETE)]
        elif kind == "truncate":
            del raw[where:]
        else:  # an ASCII digit: turns numbers in .npy headers into other numbers
            raw[where] = draw(_DIGIT)
    return raw


def mutations(files, spots):
    """Byte-mutated files (a closure: keeps the bytes out of hypothesis reprs).

    Half the cases edit the raw file (the zip layer: headers, directory, CRCs); the
    other half edit one ``.npy`` member and re-zip it with a correct CRC, so the edits
    reach the ``.npy`` header parser and the debutla validation behind it.
    """

    @st.composite
    def raw_file(draw):
        k = draw(st.integers(0, len(files) - 1))
        return bytes(_mutate(draw, bytearray(files[k]), spots[k]))

    unpacked = []
    for raw in files:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            unpacked.append(([(i.filename, i.compress_type) for i in z.infolist()],
                             {i.filename: z.read(i) for i in z.infolist()}))

    @st.composite
    def member_file(draw):
        k = draw(st.integers(0, len(files) - 1))
        infos, data = unpacked[k][0], dict(unpacked[k][1])
        name = draw(st.sampled_from(sorted(data)))
        body = bytearray(data[name])
        header_end = body.find(b"\n") + 1
        spots_in = [0, 8, max(0, header_end - 24), header_end]
        data[name] = bytes(_mutate(draw, body, spots_in))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for filename, compress_type in infos:
                z.writestr(filename, data[filename], compress_type=compress_type)
        return buf.getvalue()

    return st.one_of(raw_file(), member_file())


# numpy's .npy header parser (ast.literal_eval) warns about escape sequences that byte
# edits create; load silences that, so no warning escapes either (CI may run -W error)
@pytest.mark.filterwarnings("error")
def test_load_fuzz_raises_only_file_errors(base_files):
    files, spots, path = base_files
    outcomes = {"loaded": 0, "refused": 0}

    @fuzz_settings
    @given(mutations(files, spots))
    def run(raw):
        path.write_bytes(raw)
        try:
            op = load(path)
        except DeButFileError:
            outcomes["refused"] += 1
            return
        assert isinstance(op, DeBut)
        for v in op.factors:
            assert not v.flags.writeable
        op @ np.ones(op.shape[1], dtype=op.dtype)  # a loaded operator works
        outcomes["loaded"] += 1

    run()
    assert outcomes["loaded"] + outcomes["refused"] >= N_CASES
    # both outcomes occur: the edits reach files that still load (e.g. edited values)
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0
