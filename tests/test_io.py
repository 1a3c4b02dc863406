"""Tests of save/load: round trips and every refusal of a bad file."""

from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import debutla as db
from debutla import DeBut, DeButFileError, load
from debutla.io import FORMAT_VERSION
from strategies import DTYPE_IDS, DTYPES, operators

SMALL = "8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8"
WIDE = "4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 12"


def assert_same_operator(a: DeBut, b: DeBut) -> None:
    assert a.chain == b.chain
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert len(a.factors) == len(b.factors)
    for u, v in zip(a.factors, b.factors):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u, v)


def members(path) -> dict:
    """The arrays of a saved file (read without pickle)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write(path, arrays: dict, compressed: bool = False) -> None:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


@pytest.fixture
def saved(tmp_path):
    op = DeBut.random(WIDE, seed=3, dtype=np.complex64, shape=(3, 10))
    p = tmp_path / "op.npz"
    db.save(op, p)
    return op, p


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [None, (3, 10), (1, 1)], ids=["full", "padded", "1x1"])
def test_save_load_round_trip(tmp_path, dtype, shape):
    op = DeBut.random(WIDE, seed=1, dtype=dtype, shape=shape)
    p = tmp_path / "w.npz"
    db.save(op, p)
    back = load(p)
    assert_same_operator(back, op)
    x = np.random.default_rng(0).standard_normal(op.shape[1])
    assert np.array_equal(back @ x, op @ x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transpose_adjoint_and_conj_survive_save_and_load(tmp_path, dtype):
    op = DeBut.random(WIDE, seed=2, dtype=dtype, shape=(3, 10))
    for name, derived in [("T", op.T), ("H", op.H), ("conj", op.conj()),
                          ("TT", op.T.T), ("HT", op.H.T)]:
        p = tmp_path / f"{name}.npz"
        db.save(derived, p)
        back = load(p)
        assert_same_operator(back, derived)
        assert np.array_equal(back.to_dense(), derived.to_dense())
    assert load(tmp_path / "T.npz").shape == (10, 3)


@given(op=st.sampled_from(DTYPES).flatmap(operators))
def test_save_load_round_trips_random_operators(tmp_path_factory, op):
    p = tmp_path_factory.mktemp("rt") / "op.npz"
    db.io.save(op, str(p))
    assert_same_operator(load(str(p)), op)


def test_loaded_factors_are_read_only(saved):
    _, p = saved
    for v in load(p).factors:
        with pytest.raises(ValueError):
            v[...] = 0
        with pytest.raises(ValueError):
            v.flags.writeable = True


def test_save_writes_a_versioned_npz_without_pickles(saved):
    op, p = saved
    assert zipfile.is_zipfile(p)
    m = members(p)  # allow_pickle=False: would raise on any object array
    assert int(m["version"]) == FORMAT_VERSION
    assert m["pqrst"].tolist() == [list(r) for r in op.chain.to_pqrst()]
    assert m["shape"].tolist() == [3, 10]
    assert str(m["dtype"]) == "complex64"
    assert sorted(k for k in m if k.startswith("factor_")) == ["factor_0", "factor_1",
                                                               "factor_2"]


def test_save_accepts_str_and_path_and_refuses_non_operators(tmp_path):
    op = DeBut.random(SMALL, seed=0)
    db.io.save(op, str(tmp_path / "a.npz"))
    db.io.save(op, pathlib.Path(tmp_path / "b.npz"))
    assert_same_operator(load(tmp_path / "a.npz"), load(str(tmp_path / "b.npz")))
    with pytest.raises(TypeError, match="DeBut"):
        db.io.save(op.to_dense(), tmp_path / "c.npz")


def test_compressed_and_fortran_ordered_files_load(saved, tmp_path):
    op, p = saved
    m = members(p)
    write(tmp_path / "c.npz", m, compressed=True)
    assert_same_operator(load(tmp_path / "c.npz"), op)
    m["factor_1"] = np.asfortranarray(m["factor_1"])
    assert not m["factor_1"].flags.c_contiguous
    write(tmp_path / "f.npz", m)
    assert_same_operator(load(tmp_path / "f.npz"), op)


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------

def test_file_error_is_a_value_error():
    assert issubclass(DeButFileError, ValueError)


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04" + b"\0" * 30,
                                     b"\x93NUMPY\x01\x00"])
def test_non_zip_files_are_refused(tmp_path, content):
    p = tmp_path / "x.npz"
    p.write_bytes(content)
    with pytest.raises(DeButFileError):
        load(p)


def test_a_plain_npy_file_is_refused(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.ones(3))
    with pytest.raises(DeButFileError):
        load(p)


def test_every_truncation_is_refused(saved, tmp_path):
    _, p = saved
    raw = p.read_bytes()
    q = tmp_path / "t.npz"
    for n in range(len(raw)):
        q.write_bytes(raw[:n])
        with pytest.raises(DeButFileError):
            load(q)


def _rewrite_member(src_path, dst_path, name, edit):
    """Copy a zip, passing member ``name``'s bytes through ``edit``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, edit(data) if info.filename == name else data)
    dst_path.write_bytes(buf.getvalue())


def test_truncated_member_data_is_refused(saved, tmp_path):
    _, p = saved
    q = tmp_path / "t.npz"
    # header intact, one value missing
    _rewrite_member(p, q, "factor_1.npy", lambda data: data[:-8])
    with pytest.raises(DeButFileError, match="factor_1"):
        load(q)


def _edit(saved, tmp_path, **changes):
    _, p = saved
    m = members(p)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    q = tmp_path / "edited.npz"
    write(q, m)
    return q


@pytest.mark.parametrize("changes, words", [
    (dict(version=np.array(FORMAT_VERSION + 1)), ["version"]),
    (dict(version=np.array(0)), ["version"]),
    (dict(version=np.array(1.0)), ["version"]),
    (dict(version=np.array("1")), ["version"]),
    (dict(version=np.array([1, 1])), ["version"]),
    (dict(version=None), ["version"]),
    (dict(format=np.array("numpy")), ["not a debutla file"]),
    (dict(format=None), ["format"]),
    (dict(pqrst=np.array([[96, 72, 4, 3, 1]])), ["factor"]),
    (dict(pqrst=np.array([[12, 12, 2, 2, 1], [6, 6, 2, 2, 1], [4, 6, 2, 3, 2]])),
     ["chain"]),
    (dict(pqrst=np.array([[6, 12, 1, 2, 1], [6, 6, 2, 2, 1], [4, 6, 2, 3, 0]])),
     ["chain", "positive"]),
    (dict(pqrst=np.array([[6, 12, 1, 2, 1], [6, 6, 2, 2, 1], [4, 6, 3, 3, 2]])),
     ["chain", "multiple"]),
    (dict(pqrst=np.zeros((0, 5), dtype=np.int64)), ["chain"]),
    (dict(pqrst=np.array([[6, 12, 1, 2], [6, 6, 2, 2], [4, 6, 2, 3]])), ["pqrst"]),
    (dict(pqrst=np.array([[6.0, 12, 1, 2, 1], [6, 6, 2, 2, 1], [4, 6, 2, 3, 2]])),
     ["pqrst"]),
    (dict(pqrst=None), ["pqrst"]),
    (dict(shape=np.array([5, 10])), ["shape"]),
    (dict(shape=np.array([3, 13])), ["shape"]),
    (dict(shape=np.array([0, 10])), ["m"]),
    (dict(shape=np.array([3, 10, 1])), ["shape"]),
    (dict(shape=np.array([3.0, 10.0])), ["shape"]),
    (dict(shape=None), ["shape"]),
    (dict(dtype=np.array("int64")), ["dtype"]),
    (dict(dtype=np.array("float16")), ["dtype"]),
    (dict(dtype=np.array("no-such-type")), ["dtype"]),
    (dict(dtype=np.array("float64")), ["factor 0", "float64"]),
    (dict(dtype=None), ["dtype"]),
    (dict(factor_1=np.zeros((3, 2, 1, 2), dtype=np.complex64)), ["factor 1"]),
    (dict(factor_1=np.zeros((3, 2, 2, 1), dtype=np.complex64).ravel()), ["factor 1"]),
    (dict(factor_2=np.zeros((1, 2, 3, 2), dtype=np.complex128)), ["factor 2"]),
    (dict(factor_0=np.zeros((6, 1, 2, 1), dtype=np.float32)), ["factor 0"]),
    (dict(factor_1=None), ["factor_1"]),
    (dict(factor_3=np.zeros((1, 1, 1, 1), dtype=np.complex64)), ["factor_3"]),
    (dict(factor_17=np.zeros((1,), dtype=np.complex64)), ["factor_17"]),
])
def test_hand_edited_files_are_refused_with_a_clear_error(saved, tmp_path, changes, words):
    q = _edit(saved, tmp_path, **changes)
    with pytest.raises(DeButFileError) as e:
        load(q)
    for w in words:
        assert w in str(e.value)


class _Trap:
    """Unpickling this would flip a flag: a loader must never get that far."""

    triggered = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    _Trap.triggered = True
    return 0


@pytest.mark.parametrize("member", ["factor_0", "version", "pqrst", "dtype"])
def test_object_dtype_members_are_refused_without_unpickling(saved, tmp_path, member):
    _, p = saved
    m = members(p)
    m[member] = np.array([_Trap(), 1], dtype=object)
    q = tmp_path / "obj.npz"
    np.savez(q, **m)  # numpy pickles object arrays here
    _Trap.triggered = False
    with pytest.raises(DeButFileError, match="dtype|object"):
        load(q)
    assert not _Trap.triggered


def _zip_with(path_in, path_out, compress_type, corrupt_member=None):
    """Rewrite a saved file with another compression, optionally corrupting one member."""
    with zipfile.ZipFile(path_in) as src, zipfile.ZipFile(path_out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=compress_type)
    if corrupt_member is None:
        return
    raw = bytearray(pathlib.Path(path_out).read_bytes())
    with zipfile.ZipFile(path_out) as z:
        info = z.getinfo(corrupt_member)
    # local header: 30 bytes + name + extra; corrupt the middle of the compressed data
    name_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    for k in range(start + info.compress_size // 3, start + info.compress_size // 3 + 6):
        raw[k] ^= 0xA5
    pathlib.Path(path_out).write_bytes(bytes(raw))


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["deflate", "bzip2", "lzma"])
def test_compressed_files_load_and_corrupt_compressed_data_is_refused(saved, tmp_path, method):
    op, p = saved
    good = tmp_path / "good.npz"
    _zip_with(p, good, method)
    assert_same_operator(load(good), op)
    for member in ("factor_0.npy", "pqrst.npy"):
        bad = tmp_path / "bad.npz"
        _zip_with(p, bad, method, corrupt_member=member)
        with pytest.raises(DeButFileError):
            load(bad)


def test_member_header_claiming_more_data_than_stored_is_refused(saved, tmp_path):
    _, p = saved

    def grow(data):
        assert b"(6, 1, 2, 1)" in data
        return data.replace(b"(6, 1, 2, 1)", b"(6000000000000, 1, 2, 1)", 1)

    q = tmp_path / "big.npz"
    _rewrite_member(p, q, "factor_0.npy", grow)
    with pytest.raises(DeButFileError, match="factor_0"):
        load(q)


@pytest.mark.parametrize("member, old, new", [
    ("dtype.npy", b"'shape': (), }", b"'s), }"),                 # unterminated string
    ("pqrst.npy", b"'descr': '<i8'", b"'descr': <i8'"),          # not a literal
    ("shape.npy", b"'fortran_order': False", b"'fortran_order': 'x'"),
    ("factor_0.npy", b"'shape': (6, 1, 2, 1)", b"'shape': (6, -1, 2, -1)"),
    ("factor_1.npy", b"'descr': '<c8'", b"'descr': '|O'"),
    ("factor_1.npy", b"'descr': '<c8'", b"'descr': '>c8'"),
])
def test_edited_npy_headers_are_refused(saved, tmp_path, member, old, new):
    _, p = saved

    def edit(data):
        end = data.index(b"\n")
        assert old in data[:end]
        header = data[:end].replace(old, new, 1)
        return header.ljust(end) + data[end:]  # same header length: only the text changes

    q = tmp_path / "h.npz"
    _rewrite_member(p, q, member, edit)
    with pytest.raises(DeButFileError):
        load(q)
