"""Sphinx configuration of featup_mmseg's documentation (MyST Markdown pages, API reference
from the docstrings). Built by ``make docs`` (part of ``make test``) with warnings as
errors."""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

from featup_mmseg.version import __version__  # noqa: E402

project = 'featup_mmseg'
author = 'The featup_mmseg Authors'
copyright = '2026, The featup_mmseg Authors'
version = release = __version__

extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon']
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
# links to headings of other pages ([text](page.md#a-heading)), checked at build time
myst_heading_anchors = 3

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'alabaster'
html_title = f'featup_mmseg {release}'
