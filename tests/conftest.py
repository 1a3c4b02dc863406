"""Shared pytest configuration: hypothesis profiles.

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
