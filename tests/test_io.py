"""Tests of save/load: round trips and every refusal of a bad file."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import time
import tracemalloc
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


def _apply(d: dict, changes: dict) -> dict:
    """``d`` with ``changes`` applied in place (a value of None deletes the key)."""
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return d


def _edit(saved, tmp_path, **changes):
    _, p = saved
    m = _apply(members(p), changes)
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


def test_deflated_files_load_and_corrupt_deflated_data_is_refused(saved, tmp_path):
    op, p = saved
    good = tmp_path / "good.npz"
    _zip_with(p, good, zipfile.ZIP_DEFLATED)
    assert_same_operator(load(good), op)
    for member in ("factor_0.npy", "pqrst.npy"):
        bad = tmp_path / "bad.npz"
        _zip_with(p, bad, zipfile.ZIP_DEFLATED, corrupt_member=member)
        with pytest.raises(DeButFileError):
            load(bad)


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"),
                                          (zipfile.ZIP_LZMA, "lzma")])
def test_bzip2_and_lzma_members_are_refused_before_decompression(saved, tmp_path, method,
                                                                 name):
    # zipfile expands these without a bound on the output (a 547-byte bzip2 member
    # reached 830 MB); numpy never writes them
    _, p = saved
    q = tmp_path / "b.npz"
    _zip_with(p, q, method)
    with pytest.raises(DeButFileError, match=f"'format' is compressed with {name}"):
        load(q)


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
    ("factor_1.npy", b"'descr': '<c8'", b"'descr': '<c16'"),
    ("pqrst.npy", b"'descr': '<i8'", b"'descr': '<u8'"),
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


# ---------------------------------------------------------------------------------------
# atomic save (issue 7 defect 3)
# ---------------------------------------------------------------------------------------

def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name != "op.npz")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt,
                                   MemoryError])
def test_a_save_that_fails_midway_leaves_the_previous_file_and_no_temporary(saved, tmp_path,
                                                                          monkeypatch, error):
    op, p = saved
    before = p.read_bytes()
    other = DeBut.random(SMALL, seed=9)

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(type(error) if isinstance(error, BaseException) else error):
        db.io.save(other, p)
    assert p.read_bytes() == before
    assert_same_operator(load(p), op)
    assert _leftovers(tmp_path) == []


def test_a_failing_fsync_or_rename_leaves_the_previous_file(saved, tmp_path, monkeypatch):
    op, p = saved
    before = p.read_bytes()
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            def fail(*args):
                raise OSError(5, "Input/output error")
            m.setattr(db.io.os, name, fail)
            with pytest.raises(OSError, match="Input/output"):
                db.io.save(DeBut.random(SMALL, seed=9), p)
        assert p.read_bytes() == before
        assert _leftovers(tmp_path) == []


def test_save_replaces_the_file_by_rename_not_in_place(saved, tmp_path):
    op, p = saved
    old_inode = p.stat().st_ino
    keep = tmp_path / "hardlink.npz"
    os.link(p, keep)  # a reader holding the old file keeps reading the old bytes
    other = DeBut.random(SMALL, seed=9)
    db.io.save(other, p)
    assert p.stat().st_ino != old_inode
    assert_same_operator(load(keep), op)
    assert_same_operator(load(p), other)


def test_save_keeps_permissions_and_follows_symlinks(tmp_path):
    op = DeBut.random(SMALL, seed=0)
    p = tmp_path / "op.npz"
    db.save(op, p)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # as open() would create it
    p.chmod(0o640)
    db.save(op, p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    link = tmp_path / "link.npz"
    link.symlink_to(p)
    other = DeBut.random(SMALL, seed=1)
    db.io.save(other, link)
    assert link.is_symlink()
    assert_same_operator(load(p), other)


def test_save_into_a_missing_directory_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        db.io.save(DeBut.random(SMALL, seed=0), tmp_path / "nope" / "op.npz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# bombs and non-regular files (issue 7 defect 5)
# ---------------------------------------------------------------------------------------

def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npy_header_only(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(path, members: dict, method=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)


def _metadata(chain: str, dtype="float64", shape=None) -> dict:
    c = db.Chain.parse(chain)
    return {"format": _npy(np.array("debutla")), "version": _npy(np.array(1)),
            "pqrst": _npy(np.array(c.to_pqrst(), dtype=np.int64)),
            "shape": _npy(np.array(shape or c.shape, dtype=np.int64)),
            "dtype": _npy(np.array(dtype))}


class _Bounded:
    """Peak traced memory and time of a block."""

    def __enter__(self):
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


def _assert_refused_cheaply(q, match, max_bytes=4 << 20, max_seconds=2.0):
    with _Bounded() as b:
        with pytest.raises(DeButFileError, match=match):
            load(q)
    assert b.peak < max_bytes, f"peak {b.peak} bytes"
    assert b.seconds < max_seconds


def _deflated_zeros(path, name, header: bytes, n_zeros: int, others: dict) -> None:
    """A deflated member ``header + n_zeros zero bytes`` (streamed: never all in memory)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for k, data in others.items():
            z.writestr(k + ".npy", data)
        with z.open(name + ".npy", "w") as f:
            f.write(header)
            block = bytes(1 << 20)
            left = n_zeros
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))


def test_a_huge_metadata_member_is_refused_before_decompression(tmp_path):
    # 'pqrst' claims 64 MiB of zeros (a small deflated member): the cap on metadata
    # entries refuses it from the zip directory alone
    q = tmp_path / "bomb.npz"
    others = _metadata(SMALL)
    del others["pqrst"]
    n = 64 << 20
    _deflated_zeros(q, "pqrst", _npy_header_only((n // 40, 5), "<i8"), n, others)
    assert q.stat().st_size < 100_000
    _assert_refused_cheaply(q, "'pqrst' declares")


def test_a_factor_claiming_more_than_its_chain_needs_is_refused_before_decompression(
        tmp_path):
    q = tmp_path / "bomb.npz"
    others = _metadata(SMALL)
    _deflated_zeros(q, "factor_0", _npy_header_only((1 << 22,)), 8 << 22, others)
    _assert_refused_cheaply(q, r"factor_0.*declares")


def _set_declared_size(path, member: str, size: int) -> None:
    """Rewrite the uncompressed size a (non-zip64) zip declares for ``member``."""
    raw = bytearray(pathlib.Path(path).read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    raw[local + 22: local + 26] = size.to_bytes(4, "little")
    pos = raw.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = int.from_bytes(raw[pos + 28: pos + 30], "little")
        if raw[pos + 46: pos + 46 + name_len] == member.encode():
            raw[pos + 24: pos + 28] = size.to_bytes(4, "little")
        pos = raw.find(b"PK\x01\x02", pos + 4)
    pathlib.Path(path).write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo(member).file_size == size


def members_bytes(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: z.read(i) for i in z.infolist()}


def test_a_valid_huge_chain_in_a_tiny_file_is_refused_by_the_expansion_bound(tmp_path):
    # the chain is valid and needs 8 GiB of float64 values; the factor's entry claims
    # 4 GiB from 4 stored bytes: refused from the zip directory, nothing allocated
    members = _metadata("1073741824 <-(1,1,1)- 1073741824")
    members["factor_0"] = b"tiny"
    q = tmp_path / "big.npz"
    _zip(q, members)
    _set_declared_size(q, "factor_0.npy", 2**32 - 1)
    assert q.stat().st_size < 2_000
    _assert_refused_cheaply(q, r"'factor_0' declares 4294967295 bytes from 4 in the file; "
                               r"stored gives at most 4")


def test_a_member_whose_stream_is_longer_than_declared_is_cut_at_the_declared_size(
        saved, tmp_path):
    # declared sizes can lie: 64 MiB of zeros follow a factor whose entry declares only
    # the factor's own bytes; the reader stops there (and the CRC then fails)
    _, p = saved
    members = members_bytes(p)
    good = members.pop("factor_0")
    q = tmp_path / "liar.npz"
    _deflated_zeros(q, "factor_0", good, 64 << 20, members)
    _set_declared_size(q, "factor_0.npy", len(good))
    assert q.stat().st_size < 200_000
    _assert_refused_cheaply(q, "CRC")


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "directory", "fifo"])
def test_non_regular_files_are_refused_up_front(tmp_path, target):
    if target == "directory":
        target = tmp_path
    elif target == "fifo":
        target = tmp_path / "pipe.npz"
        os.mkfifo(target)  # no writer: opening it for reading must not wait
    elif not os.path.exists(target):
        pytest.skip(f"{target} is absent")
    kind = {"/dev/zero": "character device", "/dev/null": "character device"}.get(
        str(target), "FIFO" if str(target).endswith("pipe.npz") else "directory")
    _assert_refused_cheaply(target, f"is a {kind}; debutla files are regular files",
                            max_seconds=1.0)


def test_a_symlink_to_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.npz"
    link.symlink_to("/dev/zero")
    _assert_refused_cheaply(link, "character device", max_seconds=1.0)


# ---------------------------------------------------------------------------------------
# what load wraps and what it lets through (issue 7 defect 7)
# ---------------------------------------------------------------------------------------

def test_memory_error_while_loading_a_valid_file_propagates(saved, monkeypatch):
    _, p = saved

    def no_memory(self, *args):
        raise MemoryError

    monkeypatch.setattr(zipfile.ZipExtFile, "read", no_memory)
    with pytest.raises(MemoryError):
        load(p)


def test_a_bugs_type_error_is_not_reported_as_a_bad_file(saved, monkeypatch):
    _, p = saved

    def bug(cls, rows):
        raise TypeError("a bug in from_pqrst")

    monkeypatch.setattr(db.Chain, "from_pqrst", classmethod(bug))
    with pytest.raises(TypeError, match="a bug in from_pqrst"):
        load(p)


def test_an_io_error_while_reading_is_an_os_error_not_a_bad_file(saved, monkeypatch):
    _, p = saved

    def eio(self, *args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(zipfile.ZipExtFile, "read", eio)
    with pytest.raises(OSError, match="Input/output") as e:
        load(p)
    assert not isinstance(e.value, DeButFileError)


# ---------------------------------------------------------------------------------------
# byte order (issue 7 defect 8)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_big_endian_files_load_in_native_byte_order(saved, tmp_path, dtype):
    op = DeBut.random(WIDE, seed=4, dtype=dtype, shape=(3, 10))
    p = tmp_path / "le.npz"
    db.save(op, p)
    m = members(p)
    for k in m:
        if k.startswith("factor_") or k in ("pqrst", "shape", "version"):
            m[k] = m[k].astype(m[k].dtype.newbyteorder(">"))
    assert m["factor_0"].dtype.byteorder == ">"
    q = tmp_path / "be.npz"
    write(q, m)
    back = load(q)
    assert_same_operator(back, op)
    assert all(v.dtype.isnative for v in back.factors)


# ---------------------------------------------------------------------------------------
# .safetensors (issue 10)
# ---------------------------------------------------------------------------------------

def test_safetensors_without_the_package_is_a_clear_import_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    op = DeBut.random(SMALL, seed=0)
    with pytest.raises(ImportError, match="pip install safetensors"):
        db.save(op, tmp_path / "op.safetensors")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load(tmp_path / "x.safetensors")


def test_format_argument_is_checked(tmp_path):
    op = DeBut.random(SMALL, seed=0)
    with pytest.raises(ValueError, match="format must be one of"):
        db.io.save(op, tmp_path / "a.npz", format="hdf5")
    with pytest.raises(TypeError, match="format must be one of"):
        load(tmp_path / "a.npz", format=1)
    assert list(tmp_path.iterdir()) == []


class TestSafetensors:
    @pytest.fixture(autouse=True)
    def _needs_safetensors(self):
        pytest.importorskip("safetensors")

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape", [None, (3, 10)], ids=["full", "padded"])
    def test_round_trip(self, tmp_path, dtype, shape):
        op = DeBut.random(WIDE, seed=1, dtype=dtype, shape=shape)
        for derived in (op, op.T, op.H):
            p = tmp_path / "w.safetensors"
            db.save(derived, p)
            assert_same_operator(load(p), derived)

    @given(op=st.sampled_from(DTYPES).flatmap(operators))
    def test_round_trips_random_operators(self, tmp_path_factory, op):
        p = tmp_path_factory.mktemp("st") / "op.safetensors"
        db.io.save(op, p)
        assert_same_operator(load(p), op)

    def test_suffix_chooses_the_format_and_format_overrides_it(self, tmp_path):
        import safetensors

        op = DeBut.random(WIDE, seed=2, dtype=np.complex128)
        db.io.save(op, tmp_path / "a.SafeTensors")
        assert not zipfile.is_zipfile(tmp_path / "a.SafeTensors")
        db.io.save(op, tmp_path / "b.bin", format="safetensors")
        db.io.save(op, tmp_path / "c.safetensors", format="npz")
        assert zipfile.is_zipfile(tmp_path / "c.safetensors")
        assert_same_operator(load(tmp_path / "a.SafeTensors"), op)
        assert_same_operator(load(tmp_path / "b.bin", format="safetensors"), op)
        assert_same_operator(load(tmp_path / "c.safetensors", format="npz"), op)
        with pytest.raises(DeButFileError):
            load(tmp_path / "b.bin")  # read as .npz: not a zip
        with safetensors.safe_open(tmp_path / "b.bin", framework="numpy") as f:
            meta = f.metadata()
            assert meta == {"format": "debutla", "version": str(FORMAT_VERSION),
                            "chain": str(op.chain), "shape": "4,12", "dtype": "complex128"}
            # complex128 as (real, imaginary) float64 pairs
            t = f.get_tensor("factor_0")
            assert t.dtype == np.float64 and t.shape == op.factors[0].shape + (2,)
            assert np.array_equal(t[..., 0] + 1j * t[..., 1], op.factors[0])

    def test_a_failed_save_leaves_the_previous_file(self, tmp_path, monkeypatch):
        import safetensors.numpy

        op = DeBut.random(SMALL, seed=0)
        p = tmp_path / "op.safetensors"
        db.save(op, p)
        before = p.read_bytes()

        def fail(*a, **k):
            raise RuntimeError("serialisation failed")

        monkeypatch.setattr(safetensors.numpy, "save", fail)
        with pytest.raises(RuntimeError, match="serialisation failed"):
            db.save(DeBut.random(SMALL, seed=1), p)
        assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == [p.name]

    def _write(self, path, tensors, metadata):
        import safetensors.numpy

        safetensors.numpy.save_file(tensors, path, metadata=metadata)

    def _good(self):
        op = DeBut.random(WIDE, seed=3, dtype=np.complex64, shape=(3, 10))
        tensors = {f"factor_{i}": v for i, v in enumerate(op.factors)}
        meta = {"format": "debutla", "version": "1", "chain": str(op.chain),
                "shape": "3,10", "dtype": "complex64"}
        return op, tensors, meta

    @pytest.mark.parametrize("meta_changes, tensor_changes, words", [
        (dict(format="numpy"), {}, ["not a debutla file"]),
        (dict(format=None), {}, ["not a debutla file"]),
        (dict(version="2"), {}, ["version 2"]),
        (dict(version="0"), {}, ["version 0"]),
        (dict(version="1.0"), {}, ["'version' must be an integer"]),
        (dict(version=None), {}, ["'version'"]),
        (dict(chain="4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)"), {}, ["chain", "missing '-'"]),
        (dict(chain="4 <-(2,3,2)- 6 <-(2,2,1)- 6 <-(1,2,1)- 13"), {}, ["chain", "factor 0"]),
        (dict(chain=None), {}, ["chain", "empty"]),
        (dict(shape="3x10"), {}, ["'shape' must be 'm,n'"]),
        (dict(shape="3,-10"), {}, ["'shape'"]),
        (dict(shape="5,10"), {}, ["shape (5, 10) exceeds"]),
        (dict(shape="0,10"), {}, ["m must be a positive"]),
        (dict(dtype="int64"), {}, ["dtype 'int64' is not supported"]),
        (dict(dtype="complex128"), {}, ["factor 0", "float64 of shape (6, 1, 2, 1, 2)"]),
        (dict(dtype="float32"), {}, ["factor 0", "float32", "C64"]),
        (dict(dtype=None), {}, ["dtype"]),
        ({}, dict(factor_1=None), ["missing ['factor_1']"]),
        ({}, dict(factor_3=np.zeros(2, np.complex64)), ["add ['factor_3']"]),
        ({}, dict(factor_1=np.zeros((3, 2, 1, 2), np.complex64)), ["factor 1", "(3, 2, 2, 1)"]),
        ({}, dict(factor_0=np.zeros((6, 1, 2, 1), np.float32)), ["factor 0", "F32"]),
        ({}, dict(factor_0=np.zeros((6, 1, 2, 1), np.int64)), ["factor 0", "I64"]),
    ])
    def test_edited_files_are_refused(self, tmp_path, meta_changes, tensor_changes, words):
        _, tensors, meta = self._good()
        p = tmp_path / "e.safetensors"
        self._write(p, _apply(tensors, tensor_changes), _apply(meta, meta_changes))
        with pytest.raises(DeButFileError) as e:
            load(p)
        for w in words:
            assert w in str(e.value)

    def test_untouched_reference_file_loads(self, tmp_path):
        op, tensors, meta = self._good()
        p = tmp_path / "ok.safetensors"
        self._write(p, tensors, meta)
        assert_same_operator(load(p), op)

    def test_damaged_and_truncated_files_are_refused(self, tmp_path):
        op, _, _ = self._good()
        p = tmp_path / "op.safetensors"
        db.save(op, p)
        raw = p.read_bytes()
        q = tmp_path / "t.safetensors"
        for n in list(range(0, 64)) + list(range(64, len(raw), 7)):
            q.write_bytes(raw[:n])
            with pytest.raises(DeButFileError):
                load(q)
        q.write_bytes(b"not a safetensors file at all")
        with pytest.raises(DeButFileError, match="not a valid safetensors file"):
            load(q)
        # a header length pointing far beyond the file
        q.write_bytes((2**40).to_bytes(8, "little") + raw[8:])
        _assert_refused_cheaply(q, "not a valid safetensors file")

    @pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
    def test_non_regular_files_are_refused_up_front(self, tmp_path, target):
        if target == "fifo":
            target = tmp_path / "pipe.safetensors"
            os.mkfifo(target)
        _assert_refused_cheaply(target, "debutla files are regular files", max_seconds=1.0)


def test_a_zip_whose_directory_points_before_the_file_start_is_a_file_error(saved, tmp_path):
    # found by the load fuzz: dropping the first byte made zipfile seek to offset -1
    # (OSError EINVAL), which is a damaged file, not an I/O error
    _, p = saved
    q = tmp_path / "shifted.npz"
    q.write_bytes(p.read_bytes()[1:])
    with pytest.raises(DeButFileError, match="lies outside the file|not a valid"):
        load(q)


@pytest.mark.parametrize("header, flags_at, name_at", [
    (b"PK\x01\x02", 8, 46),  # the zip directory: ZipFile fails to list the members
    (b"PK\x03\x04", 6, 30),  # a member's local header: fails when the member opens
], ids=["directory", "local-header"])
def test_a_member_name_flagged_utf8_that_is_not_is_a_file_error(saved, tmp_path, header,
                                                                flags_at, name_at):
    # found by the load fuzz (stop 28): flag bit 11 says the name is UTF-8, and zipfile's
    # decode of a name that is not raised UnicodeDecodeError out of load
    _, p = saved
    raw = bytearray(p.read_bytes())
    at = raw.find(header)
    raw[at + flags_at + 1] |= 0x08  # bit 11 of the little-endian flags
    raw[at + name_at] = 0xFF  # never valid UTF-8
    q = tmp_path / "utf8.npz"
    q.write_bytes(bytes(raw))
    with pytest.raises(DeButFileError, match="not a valid debutla file.*UnicodeDecodeError"):
        load(q)


@pytest.mark.parametrize("bit", [0x1, 0x20, 0x40])
def test_encrypted_or_patched_members_are_file_errors(saved, tmp_path, bit):
    # found by the load fuzz: zipfile raises NotImplementedError for flag bit 5 (patched
    # data) or 6 (strong encryption) in the zip directory
    _, p = saved
    raw = bytearray(p.read_bytes())
    raw[raw.find(b"PK\x01\x02") + 8] |= bit  # the first member's flags in the directory
    q = tmp_path / "flags.npz"
    q.write_bytes(bytes(raw))
    with pytest.raises(DeButFileError, match="format|not a valid"):
        load(q)


def test_a_zip_needing_a_newer_zip_version_is_a_file_error(saved, tmp_path):
    # found by the load fuzz: zipfile raises NotImplementedError("zip file version 6.4")
    _, p = saved
    raw = bytearray(p.read_bytes())
    raw[raw.find(b"PK\x01\x02") + 6] = 64  # "version needed to extract" of one member
    q = tmp_path / "v64.npz"
    q.write_bytes(bytes(raw))
    with pytest.raises(DeButFileError, match="zip file version 6.4"):
        load(q)
