"""
---
title: "Config: the plugin's options"
summary: The typed configuration schema of the literate mkdocs plugin, as it is written in mkdocs.yml.
---

# The plugin's options

In `mkdocs.yml`:

```yaml
plugins:
  - search
  - literate:
      sources:
        - path: labml_nn_switch          # a package: every module in it
          nav: Model                     # its section in the navigation
          order: [__init__, mha, switch] # these first, the rest by name
        - path: mkdocs-literate/mkdocs_literate # a more specific path takes its modules
          nav: Generator
          url: generator                 # its pages at generator/..., not under its path
```

With no `sources`, every package beside `mkdocs.yml` (a directory with an
`__init__.py`) is rendered, under its own name. The schema uses mkdocs' typed
`Config` classes, so a wrong option is reported by mkdocs itself, with its
name.
"""

from __future__ import annotations

from mkdocs.config import base
from mkdocs.config import config_options as c


# ## One source
#
# A package directory or a single `.py` file, relative to `mkdocs.yml`.
class SourceConfig(base.Config):
    # The path: `labml_nn_switch`, or `labml_nn_switch/experiment.py`.
    path = c.Type(str)
    # The title of its section in the navigation; the package or file name
    # when not given.
    nav = c.Optional(c.Type(str))
    # Module names, relative to the package (`__init__` for the package
    # itself, `literate.sections` for a module of a subpackage), that come
    # first in the navigation, in this order. Each must exist.
    order = c.ListOfItems(c.Type(str), default=[])
    # Module names or subpackages to leave out.
    exclude = c.ListOfItems(c.Type(str), default=[])
    # Where its pages go in the site, instead of under its own path:
    # `url: generator` puts `mkdocs-literate/mkdocs_literate/plugin.py` at
    # `generator/plugin/` and the package itself at `generator/`.
    url = c.Optional(c.Type(str))


# ## The plugin
class LiterateConfig(base.Config):
    # What to render; see above for the default.
    sources = c.ListOfItems(c.SubConfig(SourceConfig), default=[])
    # Build the navigation (hand-written pages first, then a section per
    # source) when `mkdocs.yml` has no `nav` of its own.
    nav = c.Type(bool, default=True)
    # The address of a source line: `{path}` is the file's path relative to
    # `mkdocs.yml`, `{line}` the line number. When not given and `repo_url`
    # is set, it is `{repo_url}/blob/{branch}/{path}#L{line}` (GitHub's
    # form); with neither, line numbers are not links.
    line_url = c.Optional(c.Type(str))
    branch = c.Type(str, default="main")
    # Typeset the formulas of `pymdownx.arithmatex` (generic mode) with
    # KaTeX at build time, its stylesheet and fonts served from the site
    # itself, and give search their text in readable Unicode (see
    # formulas.py).
    math = c.Type(bool, default=True)
    # Mark the scripts at the end of each page (the theme's, the site's
    # `extra_javascript`) `defer`, so that the page is shown before they run
    # (see [scripts.py](scripts.py)).
    defer_scripts = c.Type(bool, default=True)
    # Build the site in another language (`zh`): the notes of every page come
    # from the catalogues in `translations/<language>/` (see
    # [translate.py](translate.py)), and the site's address gets `<language>/`
    # added, since the translated site is served under the original one.
    language = c.Optional(c.Type(str))
    # The catalogues' folder, relative to `mkdocs.yml`.
    translations = c.Type(str, default="translations")
