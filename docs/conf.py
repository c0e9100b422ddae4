"""Sphinx configuration of the ovsw_jax documentation site.

Build it (strict: a warning, e.g. a broken link or a page left out of the
table of contents, fails the build)::

  pip install -e ".[docs]"
  python -m sphinx -W --keep-going -b html docs /tmp/ovsw_docs

The pages are Markdown (MyST). tests/test_docs.py builds the site the same
way and runs the API tour's code blocks.
"""

project = "ovsw_jax"
author = "the ovsw_jax authors"
copyright = "2026, the ovsw_jax authors"  # pylint: disable=redefined-builtin

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings up to ### get anchors, so `page.md#a-heading` links resolve and
# a stale one is a warning (an error under -W).
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

html_theme = "alabaster"
html_title = "ovsw_jax"
html_theme_options = {"description": "Binary neural networks with OvSW, "
                                     "in JAX, Flax and optax"}
