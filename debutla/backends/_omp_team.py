"""Split products on the OpenMP threads of a library already loaded in the process.

Next to torch, the second core of a two-core machine is often held by one of torch's own
OpenMP worker threads: after each parallel torch operation (``nn.Linear``, a bias add)
they keep spinning for milliseconds (``docs/torch.rst``, "Threads").  A product split
over debutla's own worker threads then competes with that spinning thread for the core
and runs at about one-thread speed (``benchmarks/README_kernels.md``, change 14).  This
module runs the split on those very threads instead: a spinning worker takes the
product's chunks at once, and nothing competes.

:class:`OpenMPTeam` opens the OpenMP runtime that torch loaded (GNU ``libgomp``; LLVM's
``libomp`` and Intel's ``libiomp5`` export the same entry point) and calls its
``GOMP_parallel(fn, data, num_threads, flags)`` through ``ctypes``, which drops the GIL
for the call.  ``fn`` is either machine code that never enters Python
(:meth:`OpenMPTeam.run_native`: the tile products' and the generated backward's bodies
of :mod:`._numba_native`, which claim work with atomic operations and call the compiled
kernel directly), or a ``ctypes`` callback (:meth:`OpenMPTeam.run`: each thread of the
team takes the GIL, claims chunks of the product with
:func:`debutla.backends._numba_pool.claim_chunks` and drops the GIL again inside the
``nogil`` kernel, as debutla's own workers do: the generic kernels' products, general
epilogues, and any product whose body is not ready yet).  Which thread computes a chunk
never changes how it is computed: the results are bitwise those of any other split
(tested).

Rules kept here:

* only a runtime that is **already loaded** is used (``RTLD_NOLOAD``): loading a second
  OpenMP runtime would start a second set of threads, the opposite of the aim;
* **one product at a time** per team: a second Python thread that finds the team busy
  gets ``False`` from :meth:`OpenMPTeam.run` and uses debutla's own pool;
* **measured, not assumed**: on a busy machine the team can be several times slower
  than debutla's own threads, so :class:`PoolChooser` runs each kind of product on
  whichever was faster lately;
* **never in a forked child**: GNU OpenMP's thread pool does not survive ``fork`` (a
  child that starts a parallel region after its parent did can hang), so a team
  belongs to the process that opened it and :func:`team` returns None elsewhere;
* a foreign thread enters Python with a new thread state at every callback, so
  ``threading.local`` data does not last from one product to the next there: the body
  that ``numba_._run_split`` hands to the team first adopts the thread's scratch
  buffers, kept by OS thread (``numba_._adopt_thread_scratch``).
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
import time
from typing import Callable

__all__ = ["OpenMPTeam", "PoolChooser", "chooser", "register", "team"]

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class OpenMPTeam:
    """The OpenMP runtime at ``path``, already loaded in this process.

    Parameters
    ----------
    path : str
        The runtime's file (e.g. torch's ``torch/lib/libgomp.so.1``).

    Raises
    ------
    OSError
        If the file is not loaded in this process (it is never loaded here).
    AttributeError
        If it has no ``GOMP_parallel`` entry point.
    """

    def __init__(self, path: str) -> None:
        noload = getattr(os, "RTLD_NOLOAD", None)
        if noload is None:
            raise OSError(f"OpenMPTeam: cannot check that {path!r} is loaded here")
        lib = ctypes.CDLL(path, mode=noload | getattr(os, "RTLD_LOCAL", 0))
        par = lib.GOMP_parallel
        par.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        par.restype = None
        # the same entry point, for bodies given by address (machine code, no Python)
        at = ctypes.cast(par, ctypes.c_void_p).value
        if not at:
            raise AttributeError(f"OpenMPTeam: {path!r} has no GOMP_parallel")
        native = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                  ctypes.c_uint)(at)
        self.path = path
        self.pid = os.getpid()
        self._parallel = par
        self._parallel_native = native
        self._busy = threading.Lock()
        self._body: Callable[[], None] | None = None
        self._errors: list[BaseException] = []
        self._entry = _CALLBACK(self._run_body)  # kept alive with the team

    def _run_body(self, _data) -> None:
        body = self._body
        try:
            if body is not None:
                body()
        except BaseException as e:  # never into C: the caller raises it
            self._errors.append(e)

    def run(self, body: Callable[[], None], threads: int) -> bool:
        """Run ``body()`` once on each of ``threads`` threads of the team (the calling
        thread is one of them) and return True; re-raise the first error of a ``body``.

        False, with nothing run, when another thread's call holds the team or in a
        forked child.
        """
        if _forked or not self._busy.acquire(blocking=False):
            return False
        try:
            self._body, self._errors = body, []
            self._parallel(self._entry, None, max(1, int(threads)), 0)
            errors = self._errors
        finally:
            self._body = None
            self._busy.release()
        if errors:
            raise errors[0]
        return True

    def run_native(self, body: int, data: int, threads: int) -> bool:
        """Run the C function at address ``body`` as ``body(data)`` on each of
        ``threads`` threads of the team (the calling thread is one of them); True.

        ``body`` must not call into Python (``_numba_native``'s bodies do not), so the
        team's threads never wait for the GIL.  False, with nothing run, when another
        thread's call holds the team or in a forked child.
        """
        if _forked or not self._busy.acquire(blocking=False):
            return False
        try:
            self._parallel_native(body, data, max(1, int(threads)), 0)
        finally:
            self._busy.release()
        return True


class PoolChooser:
    """For each kind of split product, whichever of the team and debutla's own threads
    ran it faster lately.

    The team is fast on a quiet machine, but a parallel region ends at a barrier that
    waits for every thread of the team, and the team's threads take the GIL to claim
    their chunks: when another process holds a core, the team's thread there gets
    descheduled (holding the GIL, or with a chunk in hand) and the product waits for it.
    Measured on 2 vCPUs with a busy loop on one (``benchmarks/README_kernels.md``,
    change 14): the VGG layer's two-thread inference took 7.8 ms on the team against
    1.3 ms on debutla's threads, whose late workers are never waited for.  So the choice
    is measured, per ``key`` (the kind of product: its function's code, task count,
    work and threads).  Each pool runs it :attr:`PROBES` times first, in turn; then the
    team runs unless the minimum of its last :attr:`WINDOW` wall times exceeds
    :attr:`TEAM_BIAS` times debutla's threads' (a minimum, because disturbances only
    ever add time: the first runs of a process share the cores with the loading of
    kernels, say), and the pool not chosen runs again after :attr:`FIRST_EXPLORE`
    calls, then after twice as many at each exploration, and at least once per
    :attr:`explore_s` seconds.  One fast exploration is enough to switch; a pool that
    turns slow (the machine got busy) fills its window with slow times
    within :attr:`WINDOW` calls.  The choice never changes a result.
    """

    #: kinds of product remembered at most (the table is emptied beyond it)
    MAX_KEYS = 512
    #: runs of each pool before the choice
    PROBES = 2
    #: wall times kept per pool and kind of product
    WINDOW = 4
    #: the team runs unless its best time exceeds this multiple of debutla's own: it
    #: was the faster on a quiet machine in nearly every measurement, and the minimum of
    #: the rarely run pool's few times is the more often a lucky one
    TEAM_BIAS = 1.2
    #: calls before the first exploration after the probes; the interval doubles at
    #: each exploration (until :attr:`explore_s` comes first)
    FIRST_EXPLORE = 4

    def __init__(self, explore_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.explore_s, self.clock = explore_s, clock
        # key -> [team times, own times, last exploration, calls since it,
        #         calls between explorations]
        self._stats: dict = {}

    def use_team(self, key) -> bool:
        """Whether the product of ``key`` should run on the team now."""
        st = self._stats.get(key)
        if st is None:
            return True
        nt, no = len(st[0]), len(st[1])
        if nt < self.PROBES or no < self.PROBES:  # the probes, in turn: T O T O
            return nt <= no and nt < self.PROBES or no >= self.PROBES
        best = min(st[0]) <= self.TEAM_BIAS * min(st[1])
        st[3] += 1
        now = self.clock()
        if st[3] >= st[4] or now - st[2] >= self.explore_s:
            st[2], st[3], st[4] = now, 0, 2 * st[4]
            return not best
        return best

    def record(self, key, team: bool, seconds: float) -> None:
        """Add a measured wall time of the product of ``key`` on the team or not."""
        st = self._stats.get(key)
        if st is None:
            if len(self._stats) >= self.MAX_KEYS:
                self._stats.clear()
            st = self._stats[key] = [collections.deque(maxlen=self.WINDOW),
                                     collections.deque(maxlen=self.WINDOW),
                                     self.clock(), 0, self.FIRST_EXPLORE]
        st[0 if team else 1].append(seconds)


#: the choice of the split products run with ``pool="openmp"`` (see :class:`PoolChooser`)
chooser = PoolChooser()

_team: OpenMPTeam | None = None
_lock = threading.Lock()
_forked = False  # this process is a forked child: no team (see the module docstring)


def register(path: str) -> OpenMPTeam | None:
    """Use the OpenMP runtime at ``path`` (already loaded) for ``pool="openmp"`` splits.

    Returns the team, or None (nothing registered) when the runtime cannot be used:
    not loaded in this process, without ``GOMP_parallel``, or in a forked child.
    Registering the path of the current team again keeps it.
    """
    global _team
    if _forked:
        return None
    with _lock:
        cur = _team
        if cur is not None and cur.path == path and cur.pid == os.getpid():
            return cur
        try:
            _team = OpenMPTeam(path)
        except (OSError, AttributeError):
            return None
        return _team


def team() -> OpenMPTeam | None:
    """The registered team of this process, or None.

    A forked child is known by the flag that ``os.register_at_fork`` sets in it, not by
    comparing process ids: ``os.getpid()`` is a system call, and one per layer call
    made small products 2-4 us slower (VGG layer, batch 1 and 16, two threads; the
    switch into the kernel costs the product more than the call itself).
    """
    return None if _forked else _team


def _after_fork_in_child() -> None:
    global _lock, _team, _forked
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _team, _forked = None, True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
