"""The public surface: lazy imports, exact ``__all__`` lists and one-way layering."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import debutla

PKG = pathlib.Path(debutla.__file__).parent
# modules that need optional dependencies are checked only where those import
OPTIONAL = {"debutla.backends.cupy_": "cupy", "debutla.interop.cupyx": "cupyx",
            "debutla.torch": "torch", "debutla.plot": "matplotlib"}


def _modules():
    for info in pkgutil.walk_packages([str(PKG)], prefix="debutla."):
        name = info.name
        if name.startswith("debutla._kernels") or name.endswith("__main__"):
            continue
        dep = next((d for m, d in OPTIONAL.items() if name.startswith(m)), None)
        if dep is not None and importlib.util.find_spec(dep) is None:
            continue
        yield name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_all_lists_exactly_the_public_names(name):
    mod = importlib.import_module(name)
    public = getattr(mod, "__all__", None)
    if public is None and any(p.startswith("_") for p in name.split(".")):
        return  # a private module without __all__ exports nothing
    assert public is not None, f"{name} has no __all__"
    assert len(set(public)) == len(public), f"{name}.__all__ has duplicates"
    for n in public:
        assert hasattr(mod, n), f"{name}.__all__ names {n!r}, which does not exist"
    assert "name" not in public and "xp" not in public, f"{name} exports name/xp"
    defined = {n for n, v in vars(mod).items()
               if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
               and getattr(v, "__module__", None) == name}
    missing = defined - set(public)
    assert not missing, f"{name} defines public {sorted(missing)} not in __all__"


def test_top_level_api():
    for n in debutla.__all__:
        assert getattr(debutla, n) is not None
        assert n in dir(debutla)
    assert callable(debutla.factorize) and callable(debutla.save) and callable(debutla.load)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        debutla.nope  # noqa: B018


def test_save_beside_load(tmp_path):
    op = debutla.DeBut.random("8 <-(2,2,4)- 8 <-(2,2,2)- 8 <-(2,2,1)- 8", seed=0)
    debutla.save(op, tmp_path / "a.npz")
    back = debutla.load(tmp_path / "a.npz")
    assert back.chain == op.chain
    assert all(np.array_equal(a, b) for a, b in zip(back.factors, op.factors))


def test_import_is_lazy():
    """``import debutla`` loads neither scipy, numba, the fitting code, adapters nor the
    array libraries (array_api_compat loads with the first non-NumPy array)."""
    code = ("import sys, debutla; "
            "heavy = [m for m in ('scipy', 'numba', 'debutla.interop', 'debutla.fit', "
            "'debutla.factorize.api', 'debutla.io', 'torch', 'matplotlib', "
            "'array_api_compat', 'jax') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PKG.parent)
    assert out.stdout.strip() == "[]", out.stdout


def _imports(path: pathlib.Path, modname: str) -> set[str]:
    """debutla modules imported by a file, at any level (function bodies included)."""
    tree = ast.parse(path.read_text())
    pkg = modname if path.name == "__init__.py" else modname.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("debutla"):
                if node.module is None:  # "from .. import x": the modules named
                    out.update(f"{target}.{a.name}" for a in node.names)
                else:
                    out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("debutla"))
    return out


def _layer(mod: str) -> float:
    """The layers of the architecture, bottom first (docs/contributing.rst)."""
    order = [("debutla._validation", 0), ("debutla._config", 0.5), ("debutla._timing", 0.5),
             ("debutla._arrays", 0.5),
             ("debutla.chain", 1),
             ("debutla.backends", 2), ("debutla.operator", 3), ("debutla.io", 4),
             ("debutla.testing", 4), ("debutla.fit", 4), ("debutla.factorize", 4),
             ("debutla.interop", 5), ("debutla.plot", 5), ("debutla.torch", 5),
             ("debutla.cli", 6), ("debutla.__main__", 7)]
    for prefix, layer in order:
        if mod == prefix or mod.startswith(prefix + "."):
            return layer
    return 8  # the package root re-exports everything


def test_layering_points_one_way():
    """chain <- backends <- operator <- fit/io/interop <- cli; no import reaches up."""
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        mod = ".".join(rel.parts)
        if mod.endswith(".__init__"):
            mod = mod[: -len(".__init__")]
        if mod.startswith("debutla._kernels"):
            continue
        for dep in _imports(path, mod):
            same_pkg = dep.split(".")[:2] == mod.split(".")[:2]
            if dep == "debutla" and _layer(mod) >= 6:
                continue  # the command line uses the public API through the package
            if dep == "debutla" or (not same_pkg and _layer(dep) >= _layer(mod)):
                if _layer(mod) < 8:
                    bad.append(f"{mod} imports {dep}")
    assert not bad, "\n".join(sorted(bad))
