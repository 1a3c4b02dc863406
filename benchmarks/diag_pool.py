"""The spinning pool against the executor, through the operator, as a user loop sees it.

For the VGG chain and the 4096 butterfly at batch 256 and 1024 (float32), times ``X @
op.T`` on one thread and on two threads with the spinning pool and with the executor
alone (``debutla.config(spin=False)``), interleaved over rounds, each timing the median of a loop
of 20 calls (not the minimum: on a busy machine the minimum hides the calls that waited
for a core).  Prints the medians over rounds and the speed-ups over one thread.

Usage::

    python benchmarks/diag_pool.py [--rounds 15]

Run it next to a busy process (``python -c "while True: pass" &``) to see a contended
machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import debutla as db  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}")
    rng = np.random.default_rng(0)
    for name, text in (("vgg", db.PAPER_CHAINS["vgg_512x4608_mono"]),
                       ("butterfly", str(db.Chain.butterfly(4096)))):
        op = db.DeBut.random(text, seed=0, dtype=np.float32)
        db.warmup(op)
        for k in (256, 1024):
            X = rng.standard_normal((k, op.shape[1])).astype(np.float32)
            variants = (("1 thread", 1, True), ("2 threads spinning", 2, True),
                        ("2 threads executor", 2, False))
            times: dict = {v[0]: [] for v in variants}
            for rnd in range(args.rounds):
                for label, th, spin in (variants if rnd % 2 == 0 else variants[::-1]):
                    with db.config(threads=th, spin=spin):
                        X @ op.T
                        ts = []
                        for _ in range(20):
                            t0 = time.perf_counter()
                            X @ op.T
                            ts.append(time.perf_counter() - t0)
                    times[label].append(statistics.median(ts))
            med = {lb: statistics.median(v) for lb, v in times.items()}
            one = med["1 thread"]
            print(f"{name} batch {k}: " + "  ".join(
                f"{lb} {t * 1e6:.0f} us (x{one / t:.2f})" for lb, t in med.items()), flush=True)
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
