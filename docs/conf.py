"""Sphinx configuration for the debutla docs (build: python -m sphinx -W -b html docs docs/_build)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "debutla"
author = "debutla developers"
copyright = "2026, debutla developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
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
