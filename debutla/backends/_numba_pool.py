"""The worker pool of split products: in a burst of calls, workers spin instead of sleep.

``numba_._run_split`` cuts a product into chunks of tasks that the calling thread and
the workers claim in turn.  Through a ``ThreadPoolExecutor`` each split call cost about
95 us on the 2-vCPU machines (``benchmarks/README_kernels.md``): the submit, the
worker's wake-up from sleep, and the caller's wake-up when the worker's future ended.
In a *burst* (a job posted within :data:`BURST_US` of the previous job's end: a loop of
products) the threads here do not sleep in between:

* after a burst job a worker *spins* for up to :data:`SPIN_US` microseconds without the
  GIL (the generic kernel module's ``spin``: atomic acquire loads and ``pause``) on the
  pool's generation counter; posting a job only bumps the counter, so a spinning worker
  sees it at once.  It then lingers :data:`LINGER_US` more before it takes the GIL: by
  then the caller has entered its own kernel and dropped the GIL, and taking a free GIL
  costs nothing, where taking a held one puts the thread to sleep until it is dropped
  (20-30 us to wake up, measured);
* a worker reports the end of its share with a release store made without the GIL, and
  the caller of a burst job, out of chunks, spins up to :data:`WAIT_SPIN_US` on that
  count (finding the GIL free) before it sleeps on a condition variable;
* outside a burst (a torch layer's products, say, with Python and other operators in
  between) neither spins: a worker sleeps right after its job on a condition variable,
  which posting a job notifies (check and wait under one lock: no wake-up is lost), and
  the caller sleeps until the workers notify it.  Spinning there bought nothing (the
  next job comes after the spin ended) and cost the core that torch's own OpenMP
  threads wanted (README_kernels.md, change 12);
* the caller waits only for the workers that *joined* the job: a worker that comes late
  finds the job closed (every chunk taken) and goes back to waiting, as a cancelled
  future did.

A job is a Python function over chunks (:meth:`SpinPool.run`), or, where the product
has one, a *GIL-free body* (:meth:`SpinPool.run_native`: :mod:`._numba_native`'s machine
code, which claims its tiles with atomics and calls the chain's kernel through its C
entry point).  A worker runs such a job from inside its spin loop (the generic module's
``serve``) and goes on spinning: it never takes the GIL, so it starts its first tile as
soon as it sees the job, not after the caller's Python has reached its own kernel, and
the caller's end needs no Python from the worker (``README_kernels.md``, change 31).

One job at a time: a second Python thread that finds the pool busy gets ``False`` from
:meth:`SpinPool.run` (or :meth:`SpinPool.run_native`) and runs its product on the
executor instead.  Which thread computes a task never changes how it is computed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

__all__ = ["SpinPool", "Job", "claim_chunks", "SPIN_US", "LINGER_US"]

_log = logging.getLogger("debutla")

#: how long a worker spins for the next job before it sleeps, in microseconds
SPIN_US = 200.0
#: how long the caller spins for the workers' end of a job before it sleeps
WAIT_SPIN_US = 200.0
#: a job posted within this time of the previous one's end is part of a burst: only then
#: do the workers spin after it and the caller spin for its end (else both sleep at once)
BURST_US = 100.0
#: how long a worker keeps spinning after it sees a job before it takes the GIL
LINGER_US = 8.0

# the flags (the generic module's GEN, DONE, ...: the same numbers, checked by a test):
# job generation, workers finished with the current job, and a GIL-free job's fields
_GEN, _DONE, _BODY, _DATA, _JOINED, _HELPERS, _ROUNDS, _STOP, _NJOINED = range(9)
_NFLAGS = 9
#: how long the caller of a GIL-free job sleeps between looks at a late worker's end
#: (after WAIT_SPIN_US of spinning: the worker lost its core in the middle of a tile)
POLL_S = 50e-6


def _rounds_per_us(spin: Callable[..., int]) -> float:
    """Spin rounds (one load and one ``pause``) per microsecond on this machine."""
    flags = np.zeros(2, np.int64)
    spin(flags, _GEN, 0, 10, 0)
    n = 20000
    t0 = time.perf_counter()
    spin(flags, _GEN, 0, n, 0)
    return max(1.0, n / max((time.perf_counter() - t0) * 1e6, 1e-3))


class Job:
    """One split product: ``fn(bounds[i], bounds[i + 1])`` for every chunk ``i``, claimed
    by the caller and at most ``helpers`` other threads (:func:`claim_chunks`).
    """

    __slots__ = ("fn", "bounds", "helpers", "next", "joined", "finished", "closed",
                 "errors", "burst")

    def __init__(self, fn: Callable[[int, int], None], bounds: list[int],
                 helpers: int) -> None:
        self.fn, self.bounds, self.helpers = fn, bounds, helpers
        self.next = 0          # the next chunk to claim
        self.joined = 0        # workers that took part
        self.finished = 0      # ... and are done
        self.closed = False    # every chunk taken: no more joining
        self.errors: list[BaseException] = []
        self.burst = False     # posted right after the previous job: spin around it


def claim_chunks(job: Job, lock) -> None:
    """Claim (under ``lock``) and run ``job``'s chunks until none is left or one failed;
    an error is recorded in ``job.errors`` for the caller to raise.
    """
    while True:
        with lock:
            i = job.next
            if i >= len(job.bounds) - 1 or job.errors:
                return
            job.next = i + 1
        try:
            job.fn(job.bounds[i], job.bounds[i + 1])
        except BaseException as e:  # the others stop claiming; raised by the caller
            with lock:
                job.errors.append(e)
            return


class SpinPool:
    """``workers`` threads that run a job's chunks next to the calling thread.

    Parameters
    ----------
    workers : int
        Worker threads (the caller is one more).
    kernels : module
        Provides ``spin(flags, idx, old, rounds, linger)``,
        ``store_spin(flags, sidx, sval, idx, old, rounds, linger)`` and, for the
        GIL-free jobs, ``serve``, ``post`` and ``lead`` (with the flags' numbers),
        compiled ``nogil`` (the generic kernel module).
    """

    def __init__(self, workers: int, kernels: Any) -> None:
        self.workers = workers
        self._spin, self._store_spin = kernels.spin, kernels.store_spin
        self._serve, self._post, self._lead = kernels.serve, kernels.post, kernels.lead
        rate = _rounds_per_us(self._spin)
        self.rounds = max(1, int(SPIN_US * rate))
        self.wait_rounds = max(1, int(WAIT_SPIN_US * rate))
        self.linger = max(0, int(LINGER_US * rate))
        self.flags = np.zeros(_NFLAGS, np.int64)
        #: the GIL-free jobs' scratch, by dtype (``_numba_native.tiles_job``'s ``bufs``)
        self.scratch: dict[Any, np.ndarray] = {}
        #: whether run_native can post: set once the first worker compiled post and lead
        self.native = False
        self._claim = threading.Lock()                 # claims and the job's counters
        self._fin = threading.Condition(self._claim)   # a caller sleeping on the end
        self._cond = threading.Condition(threading.Lock())  # sleeping workers
        self._busy = threading.Lock()                  # one job at a time
        self._sleeping = 0
        self._caller_waits = False
        self._stop = False
        self._last_end = 0.0
        self._job: Job | None = None
        self._threads = [threading.Thread(target=self._worker, args=(i == 0,),
                                          name=f"debutla-pool-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def _compile_native(self) -> None:
        """Compile (or load from the kernel cache) ``post``, ``lead`` and ``serve`` for
        the pool's flags, on the first worker (off the callers' threads); then
        :meth:`run_native` may post.
        """
        try:
            from numba import typeof, types

            ft, i64 = typeof(self.flags), types.int64
            self._post.compile((ft, i64, i64, i64, i64))
            self._lead.compile((ft, i64))
            self._serve.compile((ft, i64, i64, i64))
            self.native = True
        except Exception as e:  # no GIL-free jobs: the Python ones still run
            _log.debug("debutla: GIL-free pool jobs off (%s)", e)

    def _worker(self, first: bool = False) -> None:
        if first:
            self._compile_native()
        flags, seen, rounds = self.flags, 0, self.rounds
        while True:
            gen = int(self._serve(flags, seen, rounds, self.linger))  # GIL-free jobs too
            rounds = self.rounds
            if gen < 0:  # nothing came while spinning: sleep until a job is posted
                seen = -1 - gen
                with self._cond:
                    self._sleeping += 1
                    while int(flags[_GEN]) == seen:
                        self._cond.wait()
                    self._sleeping -= 1
                gen = int(flags[_GEN])
                if int(flags[_BODY]) != 0 and not self._stop:
                    continue  # a GIL-free job: serve() sees it at once and runs it
            seen = gen
            if self._stop:
                return
            job, joined = self._job, False
            if job is not None:
                with self._claim:
                    # else it came late (every chunk taken) or enough workers joined
                    if not job.closed and job.joined < job.helpers:
                        job.joined += 1
                        joined = True
            if job is None or not joined:
                rounds = self.rounds if job is not None and job.burst else 0
                continue
            claim_chunks(job, self._claim)
            with self._fin:
                job.finished += 1
                done, notify = job.finished, self._caller_waits
                if notify:
                    flags[_DONE] = done
                    self._fin.notify()
            rounds = self.rounds if job.burst else 0  # outside a burst: sleep at once
            if not notify:  # the caller spins: tell it without holding the GIL
                self._store_spin(flags, _DONE, done, _GEN, seen, 0, 0)

    def run(self, fn: Callable[[int, int], None], bounds: list[int],
            helpers: int | None = None) -> bool:
        """Run ``fn(bounds[i], bounds[i + 1])`` for every chunk ``i`` on the caller and
        at most ``helpers`` workers (default: all); re-raise the first error.  False,
        with nothing run, when another thread's job holds the pool.
        """
        if not self._busy.acquire(blocking=False):
            return False
        try:
            job = Job(fn, bounds, self.workers if helpers is None else helpers)
            flags = self.flags
            flags[_DONE] = 0
            self._job = job
            job.burst = time.perf_counter() - self._last_end < BURST_US * 1e-6
            flags[_GEN] += 1  # what the spinning workers watch
            if self._sleeping:
                with self._cond:
                    self._cond.notify_all()
            claim_chunks(job, self._claim)
            with self._claim:
                job.closed = True
                joined = job.joined
            if job.burst and joined and WAIT_SPIN_US > 0:  # the end is likely near
                deadline = time.perf_counter() + WAIT_SPIN_US * 1e-6
                done = int(flags[_DONE])
                while done < joined and time.perf_counter() < deadline:
                    done = int(self._spin(flags, _DONE, done, self.wait_rounds, 0))
            with self._fin:
                self._caller_waits = True
                while job.finished < joined:
                    self._fin.wait()
                self._caller_waits = False
            self._job = None
            self._last_end = time.perf_counter()
            if job.errors:
                raise job.errors[0]
            return True
        finally:
            self._busy.release()

    def run_native(self, body: int, data: int, helpers: int | None = None) -> bool:
        """Run the GIL-free body at address ``body`` as ``body(data)`` on the caller and
        at most ``helpers`` workers (default: all) that join while it runs, and return
        True once every thread that ran it is done.

        ``body`` must not call into Python and must share the job's work among however
        many threads call it (:mod:`._numba_native`'s bodies claim tiles or groups with
        atomics and take one scratch slot each: sized for ``helpers + 1`` threads).
        False, with nothing run, when another thread's job holds the pool or the pool
        cannot post such jobs yet (its worker is still compiling ``post`` and ``lead``).
        """
        if not self.native or not self._busy.acquire(blocking=False):
            return False
        try:
            flags = self.flags
            helpers = self.workers if helpers is None else min(helpers, self.workers)
            burst = time.perf_counter() - self._last_end < BURST_US * 1e-6
            self._post(flags, body, data, helpers, self.rounds if burst else 0)
            if self._sleeping:
                with self._cond:
                    self._cond.notify_all()
            stopped: BaseException | None = None
            if self._lead(flags, self.wait_rounds) > 0:  # a worker lost its core
                while int(flags[_DONE]) < int(flags[_NJOINED]):
                    try:
                        time.sleep(POLL_S)
                    except BaseException as e:  # (Ctrl-C) the worker still reads the
                        stopped = e             # job's arrays: wait for it, then raise
            flags[_BODY] = 0  # a worker that sees this generation late: not a job
            self._last_end = time.perf_counter()
            if stopped is not None:
                raise stopped
            return True
        finally:
            self._busy.release()

    def close(self, timeout: float = 0.0) -> None:
        """Let the worker threads end (after the job in progress, if any), waiting up to
        ``timeout`` seconds for each.
        """
        self._stop = True
        self.flags[_STOP] = 1  # before the generation: serve() hands it to Python
        self.flags[_GEN] += 1
        with self._cond:
            self._cond.notify_all()
        if timeout > 0:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(timeout)
