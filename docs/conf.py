"""Sphinx configuration of cnnrnn's documentation (Sphinx + MyST-NB, as JAX and Flax).

Build (warnings are errors):

  sphinx-build -W -b html docs docs/_build/html

The course notebooks (`course/*.md`, jupytext Markdown) are executed during the build;
`CNNRNN_DOCS_EXECUTE=off` skips them (the API reference and guides still build).
"""

import importlib
import inspect
import os
import sys
import types

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

project = "cnnrnn"
author = "cnnrnn authors"
copyright = "cnnrnn authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "README.md"]
# Jupytext Markdown notebooks: `course/*.md` carry a jupytext header and are read as notebooks.
nb_custom_formats = {}
nb_execution_mode = os.environ.get("CNNRNN_DOCS_EXECUTE", "auto")
nb_execution_timeout = 240
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# MyST resolves links between pages and to headings; a broken one is a warning (an error
# with -W). Links to files outside docs/ (experiments, configs) point at the repository.
myst_url_schemes = ["http", "https", "mailto"]

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_title = "cnnrnn"
html_theme_options = {"show_toc_level": 2}

logger = logging.getLogger("cnnrnn.api")


def _defined_in(obj, package: str) -> bool:
  module = getattr(obj, "__module__", None) or ""
  return module == package or module.startswith(package + ".")


def public_names(module_name: str, defined_in: str | None = None) -> list[str]:
  """The public classes and functions of a module.

  `__all__` when the module defines it; otherwise every name without a leading underscore
  bound to a class or function defined in `defined_in` (default: the module's package),
  which leaves out what the module merely imports (typing names, jax, numpy, submodules).
  """
  module = importlib.import_module(module_name)
  if hasattr(module, "__all__"):
    return [n for n in module.__all__
            if inspect.isclass(getattr(module, n)) or callable(getattr(module, n))]
  package = defined_in or module_name
  out = []
  for name, obj in vars(module).items():
    if name.startswith("_") or isinstance(obj, types.ModuleType):
      continue
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and _defined_in(obj, package):
      out.append(name)
  return sorted(out, key=str.lower)


class ApiDirective(SphinxDirective):
  """`{cnnrnn-api} MODULE`: autodoc entries for every public name of MODULE.

  Options: `:defined-in:` a package prefix (default: MODULE); `:names:` an explicit list
  (space-separated) instead of the discovered ones. A public name without a docstring is a
  warning, so `-W` fails the build on it.
  """
  required_arguments = 1
  has_content = False
  option_spec = {"defined-in": directives.unchanged, "names": directives.unchanged}

  def run(self):
    module_name = self.arguments[0]
    module = importlib.import_module(module_name)
    if "names" in self.options:
      names = self.options["names"].split()
    else:
      names = public_names(module_name, self.options.get("defined-in"))
    lines = []
    for name in names:
      obj = getattr(module, name, None)
      if obj is None:
        logger.warning(f"{module_name}.{name} does not exist", location=self.get_location())
        continue
      if not inspect.getdoc(obj):
        logger.warning(f"{module_name}.{name} is public but has no docstring",
                       location=self.get_location())
      kind = "autoclass" if inspect.isclass(obj) else "autofunction"
      # The page is MyST Markdown, so the nested content is too; autodoc writes
      # reStructuredText, which only an eval-rst block parses as such.
      lines.append("````{eval-rst}")
      lines.append(f".. {kind}:: {module_name}.{name}")
      if kind == "autoclass":
        lines.append("   :members:")
        lines.append("   :exclude-members: __init__, parent, name, scope")
      lines.append("````")
      lines.append("")
    if not names:
      logger.warning(f"{module_name}: no public names found", location=self.get_location())
    container = nodes.section()
    container.document = self.state.document
    self.state.nested_parse(StringList(lines, source=f"<api {module_name}>"), 0, container)
    return container.children


_SECTIONS = {"args", "arguments", "attributes", "returns", "yields", "raises", "example",
             "examples", "note", "notes", "see also", "warning", "warnings", "todo",
             "references", "methods", "keyword args", "other parameters", "parameters"}


def literal_blocks(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  """Plain-text formulas in docstrings, as the code writes them, render as literal blocks.

  A line of prose ending with ':' (not a Google section header such as 'Args:'), followed
  by lines indented further, introduces a block of formulas or a layout: it becomes a
  reStructuredText literal block ('::') instead of an accidental definition list.
  """
  out = []
  i = 0
  while i < len(lines):
    line = lines[i]
    indent = len(line) - len(line.lstrip())
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    nxt_indent = len(nxt) - len(nxt.lstrip())
    if (line.rstrip().endswith(":") and not line.rstrip().endswith("::")
        and line.strip()[:-1].lower() not in _SECTIONS and indent == 0
        and nxt.strip() and nxt_indent > indent):
      out.append(line.rstrip() + ":")
      out.append("")
      i += 1
      while i < len(lines) and (not lines[i].strip() or
                                len(lines[i]) - len(lines[i].lstrip()) > indent):
        out.append(lines[i])
        i += 1
      out.append("")
      continue
    out.append(line)
    i += 1
  lines[:] = out


def _escape_unpaired_stars(line: str) -> str:
  """`{"params": ..., **model_state}` in prose: a `**` with no partner on its line is a
  Python unpacking, not the start of bold text; outside inline literals it is escaped."""
  if line.count("**") % 2 == 0:
    return line
  out, in_literal, i = [], False, 0
  while i < len(line):
    if line[i] == "`":
      in_literal = not in_literal
    if not in_literal and line.startswith("**", i):
      out.append(r"\*\*")
      i += 2
      continue
    out.append(line[i])
    i += 1
  return "".join(out)


def escape_stars(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  lines[:] = [_escape_unpaired_stars(line) for line in lines]


def setup(app):
  app.connect("autodoc-process-docstring", escape_stars, priority=450)
  app.add_directive("cnnrnn-api", ApiDirective)
  app.connect("autodoc-process-docstring", literal_blocks, priority=400)
  return {"parallel_read_safe": True}
