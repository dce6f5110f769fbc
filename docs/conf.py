"""Sphinx configuration of the nn_core site: the API reference from the numpydoc
docstrings (napoleon, autosummary) and the guide pages in Markdown (myst-parser).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "nn_core"
author = "the nn_core developers"
copyright = "the nn_core developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "generated/*.tmp"]
templates_path = ["_templates"]

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"
autodoc_mock_imports = ["mpi4py", "torch"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True          # "Attributes" as fields: no second description
# free-text sections of the docstrings besides Notes: the calls and shapes of a
# module ("Interface"), the trainer's "Data parallel"
napoleon_custom_sections = [("Interface", "Notes"), ("Data parallel", "Notes")]
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header"]
nitpicky = False

html_theme = "alabaster"
html_static_path = []
