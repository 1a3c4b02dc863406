"""Save and load DeBut operators: ``.npz`` or ``.safetensors``, no pickle, validated on load.

The format follows the file name's suffix (``.safetensors``; anything else is ``.npz``)
unless ``format=`` says otherwise.  See ``docs/formats.rst``.

``.npz`` layout (format version 1): a zip of ``.npy`` members

- ``format``: the string ``"debutla"``; ``version``: int, the format version;
- ``pqrst``: int64 array ``(N, 5)``, the chain's ``(p, q, r, s, t)`` rows, input first;
- ``shape``: int64 array ``(2,)``, the operator's ``(m, n)``;
- ``dtype``: the value dtype's name;
- ``factor_0`` ... ``factor_{N-1}``: value arrays in the canonical ``(nb, r, s, t)`` layout.

``.safetensors`` layout (format version 1): tensors ``factor_0`` ... in the canonical
layout (complex128 values as float64 tensors ``(nb, r, s, t, 2)`` of real and imaginary
parts: safetensors has no complex128 type); metadata ``format``, ``version``, ``chain``
(the paper's notation), ``shape`` (``"m,n"``) and ``dtype``.

Loading a file costs memory in proportion to the file: every size is checked against
the chain before anything large is read, compressed members may expand no more than
deflate can (1032:1), and the bytes actually read are capped at the declared sizes.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
import tokenize
import warnings
import zipfile
import zlib
from typing import IO, Any, Callable

import numpy as np

from ._validation import SUPPORTED_DTYPES, check_choice, optional_module
from .chain import Chain, FactorSpec
from .operator import DeBut

__all__ = ["save", "load", "DeButFileError", "FORMAT_VERSION", "FORMATS"]

FORMAT_VERSION = 1
#: The file formats :func:`save` and :func:`load` know.
FORMATS = ("npz", "safetensors")

_MAGIC = "debutla"
_NUMERIC = {np.dtype(np.int64), *SUPPORTED_DTYPES}
#: Largest metadata member (format, version, pqrst, shape, dtype) of an .npz, in bytes.
_MAX_META_BYTES = 1 << 16
#: Largest ``.npy`` header accepted in front of a factor's values, in bytes.
_MAX_HEADER_BYTES = 1 << 16
#: Largest expansion of a compressed member: deflate's own limit (258 bytes per 2 bits).
_MAX_RATIO = 1032
#: The zip methods numpy writes (``savez`` and ``savez_compressed``); bzip2 and LZMA
#: are refused because zipfile decompresses them without a bound on the output.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


class DeButFileError(ValueError):
    """Raised when a file is not a valid debutla file (corrupt, truncated or edited)."""


def _format_of(path: str | os.PathLike, format: str | None, where: str) -> str:
    if format is not None:
        return check_choice(format, "format", FORMATS, where=where)
    name = os.fsdecode(os.fspath(path))
    return "safetensors" if name.lower().endswith(".safetensors") else "npz"


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------

def save(op: DeBut, path: str | os.PathLike, *, format: str | None = None) -> None:
    """Save ``op`` to ``path``, atomically.

    Parameters
    ----------
    op : DeBut
    path : str or os.PathLike
        The file; the suffix is not added for you.
    format : {"npz", "safetensors"}, optional
        By default from the suffix: ``.safetensors`` (needs the ``safetensors``
        package, ``pip install debutla[io]``), anything else ``.npz``.

    Raises
    ------
    TypeError
        If ``op`` is not a DeBut operator or ``format`` not a string.
    ValueError
        If ``format`` is not one of :data:`FORMATS`.
    ImportError
        For ``.safetensors`` without the ``safetensors`` package.
    OSError
        If the file cannot be written; the file at ``path``, if any, is then unchanged.

    Notes
    -----
    The data go to a temporary file in the same directory, which is flushed, synced
    to disk and then renamed over ``path`` (``os.replace``).  A save that fails or is
    interrupted therefore leaves the previous file intact, and removes its temporary
    file (a process killed outright can leave a hidden ``.NAME.*.tmp`` file behind,
    never a damaged ``path``).  A symbolic link at ``path`` is followed: its target is
    replaced.  An existing file keeps its permission bits; a new one gets the usual
    ones (``0o666`` less the umask).

    Examples
    --------
    >>> import tempfile, os
    >>> op = DeBut.random("4 <-(2,2,2)- 4 <-(2,2,1)- 4", seed=0)
    >>> p = os.path.join(tempfile.mkdtemp(), "op.npz")
    >>> save(op, p); np.array_equal(load(p).to_dense(), op.to_dense())
    True
    """
    if not isinstance(op, DeBut):
        raise TypeError(f"save: op must be a DeBut operator, got {type(op).__name__}")
    if _format_of(path, format, "save") == "safetensors":
        data = _safetensors_bytes(op)

        def write(f: IO[bytes]) -> None:
            f.write(data)
    else:
        arrays: dict[str, Any] = {
            "format": np.array(_MAGIC),
            "version": np.array(FORMAT_VERSION, dtype=np.int64),
            "pqrst": np.array(op.chain.to_pqrst(), dtype=np.int64).reshape(-1, 5),
            "shape": np.array(op.shape, dtype=np.int64),
            "dtype": np.array(op.dtype.name),
        }
        for i, v in enumerate(op.factors):
            arrays[f"factor_{i}"] = v

        def write(f: IO[bytes]) -> None:
            np.savez(f, **arrays)
    _write_atomically(path, write)


def _write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on a new file beside ``path``, sync it, then rename it over ``path``."""
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None  # a new file: os.open applies the umask to 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows (POSIX); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------

def load(path: str | os.PathLike, *, format: str | None = None) -> DeBut:
    """Load an operator saved by :func:`save` (or :meth:`DeBut.save`).

    Parameters
    ----------
    path : str or os.PathLike
    format : {"npz", "safetensors"}, optional
        By default from the suffix, as in :func:`save`.

    Returns
    -------
    DeBut

    Raises
    ------
    OSError
        If the file cannot be opened or read (e.g. ``FileNotFoundError``).
    DeButFileError
        (a ``ValueError``) if the path is not a regular file (a directory, FIFO or
        device such as ``/dev/zero`` is refused before anything is read), or the file is
        not a valid debutla file: corrupt, truncated, hand-edited, of a newer format
        version, inconsistent, or larger when decompressed than deflate allows.
        Nothing is unpickled.
    MemoryError
        If a valid file does not fit in memory (never reported as a bad file).
    ImportError
        For ``.safetensors`` without the ``safetensors`` package.

    Notes
    -----
    Values stored in big-endian byte order are converted to the native order.

    Examples
    --------
    See :func:`save`.
    """
    fmt = _format_of(path, format, "load")
    shown = os.fsdecode(os.fspath(path))
    with _open_regular(path, shown) as f:
        if fmt == "safetensors":
            return _load_safetensors(path, f, shown)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
                UnicodeDecodeError) as e:  # e.g. "zip file version 6.4" in the directory;
            # a member name flagged UTF-8 that is not
            raise DeButFileError(f"load: {shown!r} is not a valid debutla file "
                                 f"({type(e).__name__}: {e})") from None
        with zf:
            return _load_npz(zf, shown, os.fstat(f.fileno()).st_size)


def _open_regular(path: str | os.PathLike, shown: str) -> IO[bytes]:
    """Open ``path`` for reading, refusing anything but a regular file up front.

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a character device" if stat.S_ISCHR(mode)
                    else "a block device" if stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise DeButFileError(f"load: {shown!r} is {kind}; debutla files are regular "
                                 f"files")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# -- .npz ---------------------------------------------------------------------------------

def _member(zf: zipfile.ZipFile, name: str, file_size: int,
            max_bytes: int) -> zipfile.ZipInfo:
    """The zip entry of member ``name``, refused if its declared place or sizes are out of
    bounds (``file_size``: the size of the whole file).
    """
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise DeButFileError(f"load: the file has no {name!r} entry") from None
    if not 0 <= info.header_offset <= file_size - 30 - info.compress_size:
        raise DeButFileError(f"load: entry {name!r} lies outside the file (at "
                             f"{info.header_offset}, {info.compress_size} bytes, in a file "
                             f"of {file_size})")
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise DeButFileError(f"load: entry {name!r} is compressed with {method}; debutla "
                             f"reads stored or deflate entries (what numpy.savez and "
                             f"savez_compressed write)")
    if info.flag_bits & 0x61:  # bits 0, 5 and 6: encrypted or patched data
        raise DeButFileError(f"load: entry {name!r} is encrypted or holds patched data")
    if info.file_size > max_bytes:
        raise DeButFileError(f"load: entry {name!r} declares {info.file_size} bytes, more "
                             f"than the {max_bytes} it can hold")
    stored = info.compress_type == zipfile.ZIP_STORED
    most = info.compress_size if stored else _MAX_RATIO * info.compress_size + 1024
    if info.file_size > most:
        method = _ZIP_METHODS[info.compress_type]
        raise DeButFileError(f"load: entry {name!r} declares {info.file_size} bytes from "
                             f"{info.compress_size} in the file; {method} gives at most "
                             f"{most}")
    return info


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse a ``.npy`` header: ``(shape, fortran_order, dtype, header_length)``.

    The errors numpy's parser raises on a damaged header become DeButFileError here,
    where only the parser can have raised them.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DeButFileError(f"load: entry {name!r} has unsupported .npy version "
                                 f"{version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        with warnings.catch_warnings():
            # numpy's header parser warns (e.g. "invalid escape sequence") on some edited
            # headers; a bad header must end as DeButFileError, even under -W error
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read_header(f, max_header_size=_MAX_HEADER_BYTES)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, UnicodeDecodeError,
            RecursionError) as e:
        if isinstance(e, DeButFileError):
            raise
        raise DeButFileError(f"load: entry {name!r} has a damaged .npy header "
                             f"({type(e).__name__}: {e})") from None
    return shape, fortran, dtype, f.tell()


def _read_member(zf: zipfile.ZipFile, name: str, file_size: int,
                 max_bytes: int = _MAX_META_BYTES,
                 want: tuple[tuple[int, ...], np.dtype] | None = None,
                 label: str | None = None) -> np.ndarray:
    """Read one ``.npy`` member, checking every size before reading its data.

    ``want`` is the (shape, dtype) a factor must have; any byte order is accepted and
    converted to the native one.  ``label`` names the member in messages.
    """
    what = label or f"entry {name!r}"
    info = _member(zf, name, file_size, max_bytes)
    with zf.open(info) as f:
        shape, fortran, dtype, header = _npy_header(f, name)
        native = dtype.newbyteorder("=") if dtype.kind in "biufc" else dtype
        if dtype.hasobject or (native not in _NUMERIC and dtype.kind != "U"):
            raise DeButFileError(f"load: {what} has disallowed dtype {dtype}")
        if want is not None and (tuple(shape), native) != want:
            raise DeButFileError(f"load: {what} must be {want[1]} of shape {want[0]}, "
                                 f"got {native} {tuple(shape)}")
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise DeButFileError(f"load: {what} declares {info.file_size} bytes but its "
                                 f"header needs {header + nbytes} (truncated or edited)")
        data = f.read(nbytes + 1)  # the zip reader stops at the declared size
    if len(data) != nbytes:
        raise DeButFileError(f"load: {what} holds {len(data)} bytes of data, expected "
                             f"{nbytes} (truncated or edited file)")
    a = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return a if dtype == native else a.astype(native)


def _scalar(a: np.ndarray, name: str, kind: str):
    if a.shape != () or a.dtype.kind != kind:
        raise DeButFileError(f"load: entry {name!r} must be a scalar of kind {kind!r}, "
                             f"got shape {a.shape} dtype {a.dtype}")
    return a.item()


def _check_version(version: Any) -> None:
    if not 1 <= version <= FORMAT_VERSION:
        raise DeButFileError(f"load: format version {version} is not supported by "
                             f"this debutla (reads versions 1..{FORMAT_VERSION})")


def _value_dtype(name: Any) -> np.dtype:
    if not isinstance(name, str):
        raise DeButFileError(f"load: the dtype must be named by a string, got {name!r}")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):  # numpy's parser of dtype strings
        raise DeButFileError(f"load: unknown dtype {name!r}") from None
    if dtype not in SUPPORTED_DTYPES:
        raise DeButFileError(f"load: dtype {name!r} is not supported")
    return dtype


def _operator(chain: Chain, factors: list[np.ndarray], shape: tuple[int, int]) -> DeBut:
    try:
        return DeBut(chain, factors, shape=shape)
    except ValueError as e:
        raise DeButFileError(f"load: {e}") from None


def _load_npz(zf: zipfile.ZipFile, shown: str, file_size: int) -> DeBut:
    try:
        return _read_npz(zf, file_size)
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as e:
        # zipfile / zlib on damaged compressed data or a truncated member, or a local
        # header's name flagged UTF-8 that is not (zip features zipfile does not
        # implement are refused by _member before it is asked)
        raise DeButFileError(f"load: {shown!r} is not a valid debutla file "
                             f"({type(e).__name__}: {e})") from None


def _read_npz(zf: zipfile.ZipFile, size: int) -> DeBut:
    magic = _scalar(_read_member(zf, "format", size), "format", "U")
    if magic != _MAGIC:
        raise DeButFileError(f"load: not a debutla file (format {magic!r})")
    _check_version(_scalar(_read_member(zf, "version", size), "version", "i"))
    pqrst = _read_member(zf, "pqrst", size)
    if pqrst.ndim != 2 or pqrst.shape[1] != 5 or pqrst.dtype.kind != "i":
        raise DeButFileError(f"load: 'pqrst' must be an integer (N, 5) array, got "
                             f"shape {pqrst.shape} dtype {pqrst.dtype}")
    try:
        chain = Chain.from_pqrst(pqrst.tolist())
    except ValueError as e:
        raise DeButFileError(f"load: invalid chain in file: {e}") from None
    shape = _read_member(zf, "shape", size)
    if shape.shape != (2,) or shape.dtype.kind != "i":
        raise DeButFileError(f"load: 'shape' must be two integers, got {shape!r}")
    dtype = _value_dtype(_scalar(_read_member(zf, "dtype", size), "dtype", "U"))
    extra = [n for n in zf.namelist() if n.startswith("factor_")
             and n != "factor_.npy" and n[7:-4].isdigit() and int(n[7:-4]) >= len(chain)]
    if extra:
        raise DeButFileError(f"load: the file has {len(chain)} factors in its chain but "
                             f"also entries {extra}")
    # every factor's declared size against the chain before any factor is read
    limits = [spec.nnz * dtype.itemsize + _MAX_HEADER_BYTES for spec in chain]
    for i, limit in enumerate(limits):
        _member(zf, f"factor_{i}", size, limit)
    factors = [_read_member(zf, f"factor_{i}", size, limits[i], want=(spec.value_shape, dtype),
                            label=f"factor {i} ({spec.notation()}, entry 'factor_{i}')")
               for i, spec in enumerate(chain)]
    return _operator(chain, factors, (int(shape[0]), int(shape[1])))


# -- .safetensors -------------------------------------------------------------------------

def _safetensors():
    what = "the .safetensors format (debutla[io])"
    optional_module("safetensors.numpy", what=what, package="safetensors")
    return optional_module("safetensors", what=what, package="safetensors")


def _safetensors_bytes(op: DeBut) -> bytes:
    st = _safetensors()
    tensors = {}
    for i, v in enumerate(op.factors):
        if v.dtype == np.complex128:  # no complex128 in safetensors: (re, im) pairs
            v = np.ascontiguousarray(v).view(np.float64).reshape(v.shape + (2,))
        tensors[f"factor_{i}"] = v
    m, n = op.shape
    metadata = {"format": _MAGIC, "version": str(FORMAT_VERSION), "chain": str(op.chain),
                "shape": f"{m},{n}", "dtype": op.dtype.name}
    return st.numpy.save(tensors, metadata=metadata)


def _stored_as(spec: FactorSpec, dtype: np.dtype) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a factor's tensor in a .safetensors file."""
    if dtype == np.complex128:
        return spec.value_shape + (2,), np.dtype(np.float64)
    return spec.value_shape, dtype


_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "C64": np.complex64}


def _load_safetensors(path: str | os.PathLike, f: IO[bytes], shown: str) -> DeBut:
    st = _safetensors()
    try:
        handle = st.safe_open(path, framework="numpy")
    except st.SafetensorError as e:
        raise DeButFileError(f"load: {shown!r} is not a valid safetensors file ({e})") from None
    with handle as sf:
        # the file safetensors opened must be the regular file checked above
        mine, theirs = os.fstat(f.fileno()), os.stat(path)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            raise DeButFileError(f"load: {shown!r} changed while it was opened")
        meta = sf.metadata() or {}
        if meta.get("format") != _MAGIC:
            raise DeButFileError(f"load: not a debutla file (format "
                                 f"{meta.get('format')!r} in the safetensors metadata)")
        version = meta.get("version", "")
        if not (version.isascii() and version.isdigit()):
            raise DeButFileError(f"load: metadata 'version' must be an integer, got "
                                 f"{version!r}")
        _check_version(int(version))
        try:
            chain = Chain.parse(meta.get("chain", ""))
        except ValueError as e:
            raise DeButFileError(f"load: invalid chain in the metadata: {e}") from None
        parts = meta.get("shape", "").split(",")
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            raise DeButFileError(f"load: metadata 'shape' must be 'm,n', got "
                                 f"{meta.get('shape')!r}")
        dtype = _value_dtype(meta.get("dtype"))
        names = [f"factor_{i}" for i in range(len(chain))]
        keys = set(sf.keys())
        if keys != set(names):
            missing, extra = sorted(set(names) - keys), sorted(keys - set(names))
            raise DeButFileError(f"load: the chain has {len(chain)} factors but the file's "
                                 f"tensors are missing {missing} and add {extra}")
        for i, (name, spec) in enumerate(zip(names, chain)):
            shape, stored = _stored_as(spec, dtype)
            sl = sf.get_slice(name)
            got = (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype()))
            if got[0] != shape or got[1] is None or np.dtype(got[1]) != stored:
                raise DeButFileError(f"load: factor {i} ({spec.notation()}) must be "
                                     f"{stored} of shape {shape}, got {sl.get_dtype()} "
                                     f"{got[0]}")
        factors = []
        for name in names:
            v = sf.get_tensor(name)
            factors.append(v.view(np.complex128)[..., 0] if dtype == np.complex128 else v)
    return _operator(chain, factors, (int(parts[0]), int(parts[1])))
