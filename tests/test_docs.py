"""The documentation builds without warnings, and docstring examples run."""

import doctest
import importlib
import pathlib
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
]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
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
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    monkeypatch.chdir(tmp_path)  # the example writes a file
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "vgg.npz").exists()
