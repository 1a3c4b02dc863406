"""Sphinx configuration for the debutla docs (build: python -m sphinx -W -b html docs docs/_build)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

# autosummary writes its stubs into docs/generated (git-ignored): start from none, so a
# stub left by an older version of the API reference cannot break a -W build
import shutil  # noqa: E402

shutil.rmtree(os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"),
              ignore_errors=True)

project = "debutla"
author = "debutla developers"
copyright = "2026, debutla developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
]
# The pictures of the user pages are drawn at build time (``.. plot::``).
try:
    import matplotlib
except ImportError as e:  # pragma: no cover - a clear message instead of unknown directives
    raise ImportError("the docs draw pictures with matplotlib: pip install \".[docs]\"") from e
matplotlib.use("Agg")
extensions.append("matplotlib.sphinxext.plot_directive")

# python -m sphinx -b doctest docs docs/_build/doctest runs every example in the pages and
# in the docstrings shown by autodoc (tests/test_docs.py does it)
# Docstring examples run with their module's names in scope, as in tests/test_docs.py.
doctest_global_setup = """
import importlib
import numpy as np
import debutla as db
for _name in ("debutla.chain", "debutla.operator", "debutla.io", "debutla.interop.scipy",
              "debutla.interop.debut_authors", "debutla.fit.api", "debutla.fit.search",
              "debutla.fit", "debutla.backends", "debutla.plot", "debutla._timing",
              "debutla._config", "debutla._warmup", "debutla.testing", "debutla.cli",
              "debutla.cli.compress"):
    try:
        _mod = importlib.import_module(_name)
    except ImportError:
        continue
    globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("__")})
"""
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_pre_code = "import numpy as np\nimport matplotlib.pyplot as plt\nimport debutla as db\n"
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
suppress_warnings = ["autosummary.import_cycle"]
