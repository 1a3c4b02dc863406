"""The kernel cache: a private folder for Numba kernel modules, trusted only when safe.

Kernel modules (generated per chain, and the generic kernels) are Python source that
this module writes to the cache folder and executes; ``numba.njit(cache=True)`` stores
their machine code beside them in ``__pycache__`` (an ``.nbi`` index, which is a pickle,
and ``.nbc`` data files), and later processes load it instead of compiling.  Whoever
can write that folder can run code in every process that uses it, so:

* the folder (``<DEBUTLA_CACHE_DIR or ~/.cache/debutla>/numba``) and its
  ``__pycache__`` are created with mode 0700 and used only when every folder from the
  cache root down is a real directory (not a symlink) owned by the current user and not
  writable by group or others; otherwise debutla warns once and uses
  ``$XDG_RUNTIME_DIR/debutla/numba`` (when that passes the same checks), else a private
  ``tempfile.mkdtemp`` folder removed at exit (kernels then compile once per process);
* a module file is read with ``O_NOFOLLOW | O_NONBLOCK`` and used only when it is a
  regular file owned by the current user whose text is exactly the source debutla
  generated; anything else at that path (a symlink, a FIFO, another text) is replaced;
* modules are executed from the source text in memory (never from a ``.pyc``), under
  the package namespace ``debutla.backends._kernels``;
* files are written to a fresh ``mkstemp`` file in the folder and renamed into place;
  a failed write removes its temporary file.

Any cache failure (no usable folder, a read-only or full disk, a corrupted index or
data file, Numba refusing to cache) never fails a product: the module is executed again
with ``cache=False`` (an in-memory compile), a ``RuntimeWarning`` is issued once per
process, and the broken cache files of that module are removed so the next process
rebuilds them.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import threading
import types
import warnings

from .. import _config

__all__ = ["cache_dir", "load_module", "uncached_module", "forget_cache_files",
           "is_cached", "KERNEL_PACKAGE"]

#: Package under which kernel modules are registered in ``sys.modules``.
KERNEL_PACKAGE = "debutla.backends._kernels"

_CACHED_DECOR = "cache=True"
_UNCACHED_DECOR = "cache=False"

_lock = threading.RLock()
_dir: list = []  # [path or None] once resolved
_warned: set = set()
_tmpdirs: list = []


def _warn_once(kind: str, message: str) -> None:
    if kind in _warned:
        return
    _warned.add(kind)
    warnings.warn(f"debutla kernel cache: {message}", RuntimeWarning, stacklevel=4)


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _unsafe_reason(path: str) -> str | None:
    """Why ``path`` is not a safe private folder (None when it is one)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path} cannot be inspected ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by the current user ({uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _private_dirs(root: str, *subs: str) -> tuple[str | None, str | None]:
    """Create (mode 0700) and check ``root/sub1/sub2...``; (path, None) or (None, why)."""
    path = root
    try:
        os.makedirs(os.path.dirname(root) or root, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {os.path.dirname(root)} ({e.strerror})"
    for part in ("",) + subs:
        path = os.path.join(path, part) if part else path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            return None, f"cannot create {path} ({e.strerror})"
        why = _unsafe_reason(path)
        if why is not None:
            return None, why
    if not os.access(path, os.W_OK | os.X_OK):
        return None, f"{path} is not writable"
    return path, None


def _cleanup_tmpdirs() -> None:
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)


def _resolve_dir() -> str | None:
    path, why = _private_dirs(_config.cache_root(), "numba", "__pycache__")
    if path is not None:
        return os.path.dirname(path)
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    alt = None
    if runtime and os.path.isabs(runtime) and _unsafe_reason(runtime) is None:
        alt, _ = _private_dirs(os.path.join(runtime, "debutla"), "numba", "__pycache__")
    if alt is None:
        try:
            tmp = tempfile.mkdtemp(prefix="debutla-kernels-")
        except OSError:
            tmp = None
        if tmp is not None:
            if not _tmpdirs:
                atexit.register(_cleanup_tmpdirs)
            _tmpdirs.append(tmp)
            alt, _ = _private_dirs(tmp, "numba", "__pycache__")
    where = (f"using {os.path.dirname(alt)} instead" if alt is not None
             else "compiling kernels in memory (once per process)")
    _warn_once("dir", f"not using the cache folder: {why}; {where}")
    return None if alt is None else os.path.dirname(alt)


def cache_dir() -> str | None:
    """The checked kernel cache folder, or None when no safe folder is available.

    Resolved once per process (see the module docstring).

    Examples
    --------
    >>> d = cache_dir()
    >>> d is None or os.path.isdir(d)
    True
    """
    if _dir:
        return _dir[0]
    with _lock:
        if not _dir:
            _dir.append(_resolve_dir())
    return _dir[0]


def _read_own_file(path: str) -> str | None:
    """The text of ``path`` if it is a regular file of ours (never follows a link)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        uid = _uid()
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _write_file(folder: str, path: str, text: str) -> None:
    """Write ``text`` at ``path`` atomically (temp file in ``folder``, then rename)."""
    if os.path.lexists(path):
        os.unlink(path)  # whatever was there (a link, a FIFO, other text) is not ours
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _module_name(stem: str, src: str) -> str:
    digest = hashlib.sha256(src.encode()).hexdigest()[:20]
    return f"{stem}_{digest}"


def _package() -> types.ModuleType:
    pkg = sys.modules.get(KERNEL_PACKAGE)
    if pkg is None:
        from . import _kernels  # the (empty) namespace package
        return _kernels
    return pkg


def _exec(name: str, src: str, filename: str) -> types.ModuleType:
    full = f"{KERNEL_PACKAGE}.{name}"
    mod = types.ModuleType(full)
    mod.__file__ = filename
    mod.__package__ = KERNEL_PACKAGE
    code = compile(src, filename, "exec")
    exec(code, mod.__dict__)
    sys.modules[full] = mod
    setattr(_package(), name, mod)
    return mod


def uncached_module(src: str, stem: str) -> types.ModuleType:
    r"""Execute kernel source with ``cache=False`` (an in-memory compile, nothing on disk).

    Examples
    --------
    >>> m = uncached_module("X = 1\n", "example")
    >>> m.__name__.startswith(KERNEL_PACKAGE), m.X
    (True, 1)
    """
    name = _module_name(stem, src) + "_mem"
    full = f"{KERNEL_PACKAGE}.{name}"
    with _lock:
        mod = sys.modules.get(full)
        if mod is None:
            mod = _exec(name, src.replace(_CACHED_DECOR, _UNCACHED_DECOR),
                        f"<debutla kernel {name}>")
    return mod


def is_cached(mod: types.ModuleType) -> bool:
    """Whether ``mod`` keeps its machine code on disk (False for in-memory modules)."""
    return not mod.__name__.endswith("_mem")


def load_module(src: str, stem: str) -> types.ModuleType:
    r"""The kernel module for ``src``, executed from a file in the cache folder.

    The file is (re)written unless it is a regular file of ours holding exactly
    ``src``; the module runs from ``src`` in memory with that file name, so Numba caches
    its machine code beside it.  Any failure falls back to :func:`uncached_module`.

    Parameters
    ----------
    src : str
        Module source whose kernels use ``@njit(cache=True, ...)``.
    stem : str
        Readable part of the module name (a hash of ``src`` is appended).

    Examples
    --------
    >>> load_module("X = 2\n", "example").X
    2
    """
    name = _module_name(stem, src)
    full = f"{KERNEL_PACKAGE}.{name}"
    mod = sys.modules.get(full)
    if mod is not None:
        return mod
    with _lock:
        mod = sys.modules.get(full)
        if mod is not None:
            return mod
        folder = cache_dir()
        if folder is None:
            return uncached_module(src, stem)
        path = os.path.join(folder, name + ".py")
        try:
            if _read_own_file(path) != src:
                _write_file(folder, path, src)
            return _exec(name, src, path)
        except Exception as e:  # OSError, or Numba refusing to cache (RuntimeError)
            sys.modules.pop(full, None)
            _warn_once("write", f"cannot use the cache folder {folder} "
                                f"({type(e).__name__}: {e}); compiling in memory")
            return uncached_module(src, stem)


def forget_cache_files(mod: types.ModuleType, error: BaseException) -> None:
    """After a cached kernel of ``mod`` failed: warn once, delete its cache files.

    The next process then compiles and stores them again.
    """
    _warn_once("use", f"a cached kernel could not be loaded or stored "
                      f"({type(error).__name__}: {error}); compiling in memory")
    path = getattr(mod, "__file__", "")
    folder = os.path.join(os.path.dirname(path), "__pycache__")
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        if n.startswith(stem + ".") and (n.endswith(".nbi") or n.endswith(".nbc")):
            try:
                os.unlink(os.path.join(folder, n))
            except OSError:
                pass


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
