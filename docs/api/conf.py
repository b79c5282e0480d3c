"""Sphinx configuration of sbnn's API reference, generated from the docstrings.

Build: ``pip install '.[docs]'`` then ``sphinx-build -W -b html docs/api docs/api/_build/html``.
Every module under ``sbnn`` (``sbnn.kernels`` included) is found by walking the package, so a
module that is added or moved appears without editing this folder.
"""

from __future__ import annotations

import importlib.metadata

project = "sbnn"
author = "the sbnn developers"
copyright = "the sbnn developers"
release = importlib.metadata.version("sbnn")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

templates_path = ["_templates"]
exclude_patterns = ["_build"]

# One page per module, written by autosummary from the package walk in index.rst.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
    # Each object is documented once, in the module that defines it; re-exports are not repeated.
    "ignore-module-all": True,
}
# Overrides without a docstring of their own (autograd.Function.forward, LightningModule hooks)
# would otherwise show the parent's text, which is written for the parent's own docs.
autodoc_inherit_docstrings = False
# Signatures stay short; the types go into the parameter lists next to the docstrings' shapes.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# Google style only (house style); NumPy sections are not parsed.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shape", "params_style")]

html_theme = "alabaster"
html_title = f"sbnn {release} API"
