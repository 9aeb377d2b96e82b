"""
---
title: "The literate site generator"
summary: >
  An mkdocs plugin that turns commented Python modules into side-by-side
  annotated pages: notes on the left, code on the right.
---

# The literate site generator

The pages of this site are not written by hand: they are derived from the
source files, whose comments and docstrings are the notes. This package is the
generator, an [mkdocs](https://www.mkdocs.org) plugin of four small parts:

* [sections.py](sections.py) splits a Python file into sections of notes
  and code, and documents the rules a source file follows;
* [notes.py](notes.py) lets notes follow the conventions literate authors
  already use (`.html` links to modules, `$$` inside paragraphs);
* [render.py](render.py) turns sections into a page: notes as Markdown,
  code highlighted with line numbers, names linked to their definitions,
  breadcrumbs and a package's list of modules;
* [formulas.py](formulas.py) typesets formulas with KaTeX when the site is
  built, and gives search their text;
* [catalogue.py](catalogue.py) and [translate.py](translate.py) render
  the pages in another language from translation catalogues that know when
  the English has changed since, with a command for translators;
* [plugin.py](plugin.py) wires it into mkdocs: pages, navigation, assets,
  formulas and `mkdocs serve`; its options are in [config.py](config.py).

To use it on your own code, install this package and add to `mkdocs.yml`:

```yaml
markdown_extensions:
  - pymdownx.arithmatex:
      generic: true
plugins:
  - search
  - literate:
      sources:
        - path: your_package
```

It never imports the code it renders; it reads it as text.
"""

from .sections import CodeLine, Module, ParseError, Section, parse

__all__ = ["CodeLine", "Module", "ParseError", "Section", "parse"]
