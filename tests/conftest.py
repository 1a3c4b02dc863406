"""Shared pytest configuration: hypothesis profiles; no compile left running after a test.

Profiles (choose with ``HYPOTHESIS_PROFILE=<name>``; default ``ci``):

- ``ci``: no deadline (timings on shared CI machines are noisy), the default example
  counts below, failing examples printed so they can be replayed.
- ``dev``: fewer examples, for a quick local loop.
- ``thorough``: many more examples, for a long local hunt.

Tests that need an exact number of examples (the fuzz suite) set it themselves.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=8,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Load Numba now: products in this process then run on it from the first one, instead
# of on the NumPy backend while it loads in the background (tests/test_first_call.py
# checks that path in fresh processes).
import debutla  # noqa: E402

debutla.warmup()


import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_compile_left_running():
    """Each test ends with no kernel compiling in the background.

    Numba's compiler swaps Python's process-wide warning filters while it runs
    (``warnings.catch_warnings`` is not thread-safe), so a compile a test leaves running
    can drop or misroute the next test's ``pytest.warns`` (seen on cold kernel caches).
    Free on a warm cache: nothing compiles.
    """
    yield
    nbk = sys.modules.get("debutla.backends.numba_")
    if nbk is not None:
        nbk.wait_for_compiles()


@pytest.fixture
def kernels_seen(monkeypatch):
    """The tile kernels the calling thread runs (``numba_._run_fused``'s kernel names;
    not the background compiles' products)."""
    import threading

    import debutla.backends.numba_ as nbk

    seen: list[str] = []
    inner = nbk._run_fused
    me = threading.current_thread()

    def spy(state, mod, kname, X, Y, k):
        if threading.current_thread() is me:
            seen.append(kname)
        return inner(state, mod, kname, X, Y, k)

    monkeypatch.setattr(nbk, "_run_fused", spy)
    return seen
