"""The documentation builds without warnings, and docstring examples run."""

import doctest
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Modules whose docstring examples are executed (each must import without optional deps).
DOCTEST_MODULES = [
    "debutla.chain",
    "debutla.operator",
    "debutla.io",
    "debutla.interop.scipy",
    "debutla.interop.debut_authors",
    "debutla.testing",
    "debutla.fit.api",
    "debutla._timing",
    "debutla.cli",
    "debutla.cli.compress",
    "debutla.plot",
    "debutla.backends.numba_",
    "debutla.backends._numba_stack",
]
# modules whose examples need an optional package (the torch modules' examples run in
# tests/test_torch.py)
OPTIONAL = {"debutla.plot": "matplotlib"}


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    mod = importlib.import_module(name)
    extra = {"np": importlib.import_module("numpy")}
    extra.update({k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")})
    res = doctest.testmod(mod, extraglobs=extra, optionflags=doctest.ELLIPSIS
                          | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0, f"{name} has no docstring examples"
    assert res.failed == 0


@pytest.mark.slow
def test_sphinx_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("matplotlib")  # the pages draw pictures at build time
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_sphinx_doctest_runs_every_example(tmp_path):
    """``sphinx -b doctest``: the examples of the user pages and of the API reference."""
    pytest.importorskip("sphinx")
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "doctest", str(ROOT / "docs"),
         str(tmp_path / "doctest")],
        capture_output=True, text=True, cwd=ROOT,
    )
    report = (tmp_path / "doctest" / "output.txt")
    text = report.read_text() if report.exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + text
    assert " 0 failures in tests" in text
    tests = int(re.search(r"Doctest summary\n=+\n\s*(\d+) tests", text).group(1))
    assert tests >= 60, text  # the user pages' examples are collected


def test_user_pages_are_in_the_toctree():
    index = (ROOT / "docs" / "index.rst").read_text(encoding="utf-8")
    pages = ["getting_started", "concepts", "benchmarks"] + sorted(
        p.stem for p in (ROOT / "docs").glob("howto_*.rst"))
    assert len(pages) >= 7
    for page in pages:
        assert f"   {page}\n" in index, page


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)  # the example writes a file
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "vgg.npz").exists()
