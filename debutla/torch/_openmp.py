"""Find the OpenMP runtime torch runs its CPU operations on, for the layers' split products.

The torch layers run their products split over threads on torch's own OpenMP threads
(``debutla.config(pool=...)``, :mod:`debutla.backends._omp_team`): this module finds
that runtime's file among the libraries loaded in the process, once per process.
"""

from __future__ import annotations

import functools
import glob
import os

import torch

from ..backends import _omp_team

__all__ = ["torch_team"]

#: file name prefixes of the OpenMP runtimes that export ``GOMP_parallel``
_RUNTIMES = ("libgomp", "libiomp5", "libomp")


def _loaded_files() -> list[str]:
    """The shared libraries mapped in this process (Linux), else torch's own folder's."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux
        here = os.path.dirname(torch.__file__)
        return sorted(glob.glob(os.path.join(here, "lib", "*")))
    files = set()
    for line in lines:  # address perms offset dev inode [path]
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            files.add(parts[5].strip())
    return sorted(files)


def _candidates() -> list[str]:
    """OpenMP runtime files, torch's own first (``torch/lib``, ``torch.libs``)."""
    here = os.path.dirname(os.path.abspath(torch.__file__))
    own = (here + os.sep, here + ".libs" + os.sep)
    found = [p for p in _loaded_files() if os.path.basename(p).startswith(_RUNTIMES)]
    mine = [p for p in found if p.startswith(own)]
    # a runtime outside torch's folders is used only when it is the only one loaded
    return mine if mine else (found if len(found) == 1 else [])


@functools.lru_cache(maxsize=None)
def _register() -> bool:
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return False
    except Exception:  # an unusual build: no team, debutla's own pool
        return False
    return any(_omp_team.register(p) is not None for p in _candidates())


def torch_team() -> _omp_team.OpenMPTeam | None:
    """The team of torch's OpenMP runtime (registered at the first call), or None when
    torch's parallel backend is not OpenMP or its runtime cannot be used.
    """
    if not _register():
        return None
    return _omp_team.team()
