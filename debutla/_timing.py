"""Timing a user can trust: medians of interleaved repeats, their spread, the threads.

One helper for ``debutla demo``, ``debutla bench`` and the speed notebook, so that every
number the project prints about speed is measured the same way:

* the functions being compared run **interleaved** (DeBut, dense, DeBut, dense, ... with
  the order rotated every round), so a burst of load from another process hits all of
  them alike instead of one;
* each function's time is the **median** over the rounds, and its **spread** is the
  interquartile range divided by the median (0.05 means the middle half of the rounds
  lay within 5% of each other);
* a spread above :data:`BUSY_SPREAD` in any function means the machine was busy (or
  throttling) while measuring: the numbers are then flagged, not silently printed;
* the thread counts in use (Numba's and the BLAS's) are reported beside the numbers.

This module is internal (``debutla._timing``); its names may change between versions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, cast

import numpy as np

from ._validation import check_int, check_real

__all__ = ["Timing", "compare", "thread_info", "describe_threads", "busy_warning",
           "BUSY_SPREAD", "format_seconds"]

#: Relative interquartile range above which a measurement is flagged as "machine busy".
BUSY_SPREAD = 0.25


@dataclass(frozen=True)
class Timing:
    """Per-call wall times of one function over interleaved rounds.

    Attributes
    ----------
    name : str
        The label given to :func:`compare`.
    times : tuple of float
        Seconds per call, one entry per round (each round averages ``number`` calls).
    number : int
        Calls per round.

    Examples
    --------
    >>> t = Timing("f", (1.0, 1.1, 0.9, 1.0), number=1)
    >>> t.median, round(t.spread, 3)
    (1.0, 0.05)
    """

    name: str
    times: tuple[float, ...]
    number: int = 1

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return float(np.median(self.times))

    @property
    def q1(self) -> float:
        """First quartile of the seconds per call."""
        return float(np.percentile(self.times, 25))

    @property
    def q3(self) -> float:
        """Third quartile of the seconds per call."""
        return float(np.percentile(self.times, 75))

    @property
    def min(self) -> float:
        """Fastest round (seconds per call)."""
        return float(np.min(self.times))

    @property
    def max(self) -> float:
        """Slowest round (seconds per call)."""
        return float(np.max(self.times))

    @property
    def spread(self) -> float:
        """Interquartile range over the median: 0 for perfectly steady rounds."""
        med = self.median
        return (self.q3 - self.q1) / med if med > 0 else 0.0

    @property
    def busy(self) -> bool:
        """True when :attr:`spread` exceeds :data:`BUSY_SPREAD`."""
        return self.spread > BUSY_SPREAD


def _calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per round so that one round lasts about ``min_time`` seconds."""
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or number >= 1 << 20:
            return number
        # aim a little past min_time; at least double to converge quickly
        number = max(2 * number, int(number * 1.2 * min_time / max(dt, 1e-9)))


def compare(fns: Mapping[str, Callable[[], object]], *, repeats: int = 9,
            min_time: float = 0.02, warmup: int = 1) -> dict[str, Timing]:
    """Time several functions in interleaved rounds.

    Parameters
    ----------
    fns : mapping of str to callable
        The functions to compare, each called with no argument.
    repeats : int
        Rounds (>= 3).  Every round calls each function ``number`` times, in an order
        rotated from round to round.
    min_time : float
        Target seconds of one function in one round (> 0); decides ``number`` for each
        function separately, so fast and slow functions are both timed over several calls.
    warmup : int
        Untimed calls of each function first (>= 0), for JIT compilation and caches.

    Returns
    -------
    dict of str to Timing
        In the order of ``fns``.

    Examples
    --------
    >>> res = compare({"sum": lambda: sum(range(100)), "max": lambda: max(range(100))},
    ...               repeats=3, min_time=1e-3)
    >>> sorted(res), len(res["sum"].times)
    (['max', 'sum'], 3)
    """
    if not isinstance(fns, Mapping) or not fns:
        raise TypeError(f"compare(fns): fns must be a non-empty mapping of names to "
                        f"callables, got {type(fns).__name__}")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"compare(fns): fns[{name!r}] must be callable, got "
                            f"{type(fn).__name__}")
    repeats = check_int(repeats, "repeats", where="compare", min=3)
    min_time = check_real(min_time, "min_time", where="compare", min=0, min_open=True)
    warmup = check_int(warmup, "warmup", where="compare", min=0)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    numbers = {name: _calibrate(fns[name], min_time) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeats):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            fn, number = fns[name], numbers[name]
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return {name: Timing(name, tuple(times[name]), numbers[name]) for name in names}


def thread_info() -> dict[str, object]:
    """The thread counts that decide this machine's speed.

    Returns
    -------
    dict
        ``"cpus"``: usable CPUs (``os.sched_getaffinity`` where available);
        ``"numba"``: Numba's thread count (None if Numba is not importable);
        ``"blas"``: list of ``(library, threads)`` from threadpoolctl (None if it is not
        installed).

    Examples
    --------
    >>> info = thread_info()
    >>> info["cpus"] >= 1
    True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        import numba

        nb_threads: int | None = int(numba.get_num_threads())
    except Exception:  # pragma: no cover - numba is a dependency
        nb_threads = None
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        blas = None
    else:
        blas = [(str(p.get("internal_api", p.get("prefix", "?"))), int(p["num_threads"]))
                for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"cpus": cpus, "numba": nb_threads, "blas": blas}


def describe_threads(info: Mapping[str, object] | None = None) -> str:
    """One line: CPUs, Numba threads, BLAS threads (from :func:`thread_info`).

    Examples
    --------
    >>> describe_threads({"cpus": 2, "numba": 2, "blas": [("openblas", 2)]})
    'threads: 2 CPUs, Numba 2, BLAS 2 (openblas)'
    >>> describe_threads({"cpus": 4, "numba": None, "blas": None})
    'threads: 4 CPUs, Numba n/a, BLAS unknown (pip install threadpoolctl)'
    """
    info = thread_info() if info is None else info
    numba_txt = "n/a" if info.get("numba") is None else str(info["numba"])
    blas = info.get("blas")
    if blas is None:
        blas_txt = "unknown (pip install threadpoolctl)"
    elif not blas:
        blas_txt = "none found"
    else:
        pairs = cast("Iterable[tuple[str, int]]", blas)  # thread_info's (library, threads)
        seen = dict.fromkeys((lib, n) for lib, n in pairs)
        blas_txt = ", ".join(f"{n} ({lib})" for lib, n in seen)
    return f"threads: {info['cpus']} CPUs, Numba {numba_txt}, BLAS {blas_txt}"


def busy_warning(timings: Mapping[str, Timing] | list[Timing],
                 threshold: float = BUSY_SPREAD) -> str | None:
    """A warning line when some timing's spread exceeds ``threshold``, else None.

    Examples
    --------
    >>> busy_warning([Timing("a", (1.0, 1.0, 1.0))]) is None
    True
    >>> busy_warning([Timing("a", (1.0, 2.0, 3.0, 1.0))])[:8]
    'warning:'
    """
    threshold = check_real(threshold, "threshold", where="busy_warning", min=0)
    items = list(timings.values()) if isinstance(timings, Mapping) else list(timings)
    worst = max(items, key=lambda t: t.spread, default=None)
    if worst is None or worst.spread <= threshold:
        return None
    load = ""
    try:
        load = f"; load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        pass
    return (f"warning: the machine looks busy: timings varied by {worst.spread:.0%} "
            f"(interquartile range / median of {worst.name!r}, above "
            f"{threshold:.0%}){load}; rerun on an idle machine before trusting the "
            f"speed-ups")


def format_seconds(s: float) -> str:
    """Seconds in a readable unit (ns, us, ms or s), 4 significant figures at most.

    Examples
    --------
    >>> format_seconds(0.00123), format_seconds(2.5e-7), format_seconds(3.0)
    ('1.23 ms', '250 ns', '3 s')
    """
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"
