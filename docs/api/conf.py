"""Sphinx configuration of the API reference: ``python3 -m sphinx -W -b html docs/api OUT``."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import anytime  # noqa: E402

project = "jax-anytime"
release = anytime.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_custom_sections = [("References", "notes_style")]
html_theme = "alabaster"
exclude_patterns = ["_build"]
