"""Run a Python script in a fresh interpreter (for what happens once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_python(script: str, *, keep: tuple[str, ...] = ("DEBUTLA_CACHE_DIR",),
               drop: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) with this checkout and ``tests/`` importable.

    The child gets no ``DEBUTLA_*`` variable but those in ``keep`` (and ``env``); the
    variables in ``drop`` are removed.
    """
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("DEBUTLA_") or k in keep}
    for k in drop:
        full.pop(k, None)
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([os.getcwd(), TESTS, full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full,
                          capture_output=True, text=True, timeout=300)
