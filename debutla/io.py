"""Save and load DeBut operators as ``.npz`` files (no pickle, validated on load).

File layout (format version 1): a zip of ``.npy`` members

- ``format``: the string ``"debutla"``; ``version``: int, the format version;
- ``pqrst``: int64 array ``(N, 5)``, the chain's ``(p, q, r, s, t)`` rows, input first;
- ``shape``: int64 array ``(2,)``, the operator's ``(m, n)``;
- ``dtype``: the value dtype's name;
- ``factor_0`` ... ``factor_{N-1}``: value arrays in the canonical ``(nb, r, s, t)`` layout.
"""

from __future__ import annotations

import math
import os
import tokenize
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

from .chain import Chain
from ._validation import SUPPORTED_DTYPES
from .operator import DeBut

__all__ = ["save", "load", "DeButFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "debutla"
_ALLOWED = {np.dtype(np.int64), *SUPPORTED_DTYPES}

try:  # zipfile reads LZMA members when Python has lzma
    from lzma import LZMAError as _LZMAError
except ImportError:  # pragma: no cover - Python built without lzma
    _LZMAError = OSError

# what zipfile, zlib/bz2/lzma and the .npy header parser raise on a damaged file
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, _LZMAError,
            tokenize.TokenError, EOFError, ValueError, KeyError, OSError, UnicodeDecodeError, NotImplementedError,
            OverflowError, MemoryError, RuntimeError, TypeError, SyntaxError, IndexError)


class DeButFileError(ValueError):
    """Raised when a file is not a valid debutla file (corrupt, truncated or edited)."""


def save(op: DeBut, path: str | os.PathLike) -> None:
    """Save ``op`` to ``path`` (``.npz``; the suffix is not added for you).

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
    arrays: dict[str, Any] = {
        "format": np.array(_MAGIC),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "pqrst": np.array(op.chain.to_pqrst(), dtype=np.int64).reshape(-1, 5),
        "shape": np.array(op.shape, dtype=np.int64),
        "dtype": np.array(op.dtype.name),
    }
    for i, v in enumerate(op.factors):
        arrays[f"factor_{i}"] = v
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read one ``.npy`` member, checking its header before allocating anything."""
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise DeButFileError(f"load: the file has no {name!r} entry") from None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DeButFileError(f"load: entry {name!r} has unsupported .npy version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        with warnings.catch_warnings():
            # numpy's header parser warns (e.g. "invalid escape sequence") on some edited
            # headers; a bad header must end as DeButFileError, even under -W error
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read_header(f)
        if dtype.hasobject or (dtype not in _ALLOWED and dtype.kind != "U"):
            raise DeButFileError(f"load: entry {name!r} has disallowed dtype {dtype}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > info.file_size:
            raise DeButFileError(f"load: entry {name!r} claims {nbytes} bytes but holds "
                                 f"at most {info.file_size}")
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise DeButFileError(f"load: entry {name!r} holds {len(data)} bytes of data, "
                             f"expected {nbytes} (truncated or edited file)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _scalar(a: np.ndarray, name: str, kind: str):
    if a.shape != () or a.dtype.kind != kind:
        raise DeButFileError(f"load: entry {name!r} must be a scalar of kind {kind!r}, "
                             f"got shape {a.shape} dtype {a.dtype}")
    return a.item()


def _load(f) -> DeBut:
    with zipfile.ZipFile(f) as zf:
        magic = _scalar(_read_member(zf, "format"), "format", "U")
        if magic != _MAGIC:
            raise DeButFileError(f"load: not a debutla file (format {magic!r})")
        version = _scalar(_read_member(zf, "version"), "version", "i")
        if not 1 <= version <= FORMAT_VERSION:
            raise DeButFileError(f"load: format version {version} is not supported by "
                                 f"this debutla (reads versions 1..{FORMAT_VERSION})")
        pqrst = _read_member(zf, "pqrst")
        if pqrst.ndim != 2 or pqrst.shape[1] != 5 or pqrst.dtype.kind != "i":
            raise DeButFileError(f"load: 'pqrst' must be an integer (N, 5) array, got "
                                 f"shape {pqrst.shape} dtype {pqrst.dtype}")
        try:
            chain = Chain.from_pqrst(pqrst.tolist())
        except (TypeError, ValueError) as e:
            raise DeButFileError(f"load: invalid chain in file: {e}") from None
        shape = _read_member(zf, "shape")
        if shape.shape != (2,) or shape.dtype.kind != "i":
            raise DeButFileError(f"load: 'shape' must be two integers, got {shape!r}")
        dtype_name = _scalar(_read_member(zf, "dtype"), "dtype", "U")
        try:
            dtype = np.dtype(dtype_name)
        except TypeError:
            raise DeButFileError(f"load: unknown dtype {dtype_name!r}") from None
        if dtype not in SUPPORTED_DTYPES:
            raise DeButFileError(f"load: dtype {dtype_name!r} is not supported")
        factors = []
        for i, spec in enumerate(chain):
            a = _read_member(zf, f"factor_{i}")
            if a.shape != spec.value_shape or a.dtype != dtype:
                raise DeButFileError(
                    f"load: factor {i} ({spec.notation()}) must be {dtype} of shape "
                    f"{spec.value_shape}, got {a.dtype} {a.shape}")
            factors.append(a)
        extra = [n for n in zf.namelist() if n.startswith("factor_")
                 and n != "factor_.npy" and n[7:-4].isdigit() and int(n[7:-4]) >= len(chain)]
        if extra:
            raise DeButFileError(f"load: the file has {len(chain)} factors in its chain but "
                                 f"also entries {extra}")
        try:
            return DeBut(chain, factors, shape=(int(shape[0]), int(shape[1])))
        except (TypeError, ValueError) as e:
            raise DeButFileError(f"load: {e}") from None


def load(path: str | os.PathLike) -> DeBut:
    """Load an operator saved by :meth:`DeBut.save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    DeBut

    Raises
    ------
    OSError
        If the file cannot be opened (e.g. ``FileNotFoundError``).
    DeButFileError
        (a ``ValueError``) if the file is not a valid debutla file: corrupt, truncated,
        hand-edited, of a newer format version, or inconsistent.  Nothing is unpickled.

    Examples
    --------
    See :func:`save`.
    """
    with open(path, "rb") as f:
        try:
            return _load(f)
        except DeButFileError:
            raise
        except _DAMAGED as e:
            # zipfile/zlib/npy-header parsing of a damaged file; nothing else is in the try
            raise DeButFileError(f"load: {os.fspath(path)!r} is not a valid debutla file "
                                 f"({type(e).__name__}: {e})") from None
