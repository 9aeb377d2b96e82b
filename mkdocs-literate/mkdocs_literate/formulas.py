r"""
---
title: "Formulas: typeset by KaTeX, readable in search"
summary: >
  How the literate generator prepares the formulas of every page: TeX for
  KaTeX in the browser, readable Unicode text for the search index.
---

# Formulas

`pymdownx.arithmatex` (in its `generic` mode) leaves each formula in the page
as TeX between `\(...\)` (inline) or `\[...\]` (display), in an element of
class `arithmatex`. Two readers see that element:

* the browser, where [KaTeX](https://katex.org) typesets it, one synchronous
  call per formula, as soon as the page's HTML is there: the 86 formulas of
  this site's biggest page take some 30 ms of the main thread, and the page
  is typeset with about a third of the main thread's work that MathJax,
  which we used before, needed (`experiments/bench_site_math.py` measures it);
* the search index, which takes the page's text: raw TeX there makes search
  results hard to read (`\alpha N \sum_i f_i P_i`).

So, after Markdown, `prepare` rewrites every formula: its TeX moves into the
element's `data-tex` attribute (and `data-display` marks display math), where
the script `assets/literate.js` reads it, on every page load including the
theme's instant navigation; and its text becomes a readable Unicode
approximation, made by [pylatexenc](https://pylatexenc.readthedocs.io)
(`\alpha_i` → `α_i`, `\frac{a}{b}` → `a/b`), which search indexes and a
reader without JavaScript sees.

KaTeX itself is served from the site (no CDN): `assets/katex/` holds the
files of the npm package `katex` 0.19.1 that the browser needs,
`dist/katex.min.js`, `dist/katex.min.css` and the fonts in `woff2` (browsers
that read `woff2`, which all current ones do, never ask for the `.woff` and
`.ttf` files the stylesheet also names), with KaTeX's MIT licence. To update
it, replace those files with a newer release's.
"""

from __future__ import annotations

import html
import re

from pylatexenc.latex2text import LatexNodes2Text

# Where our KaTeX files are in the built site, relative to its root, in the
# order the page loads them (the stylesheet, then the script).
KATEX_CSS = "katex/katex.min.css"
KATEX_JS = "katex/katex.min.js"

# A formula as arithmatex writes it. Its TeX is HTML-escaped, so it cannot
# contain the closing tag.
_FORMULA = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
_DELIMITERS = {"\\(": "\\)", "\\[": "\\]"}

# Spaces as the author typed them (`\alpha N` stays `α N`, not `αN`).
_to_text = LatexNodes2Text(math_mode="text", strict_latex_spaces="based-on-source")


def readable(tex: str) -> str:
    """A plain-text rendering of a formula, on one line."""
    try:
        text = _to_text.latex_to_text(tex)
    except Exception:  # pylatexenc is tolerant; a formula it cannot read stays TeX
        text = tex
    return " ".join(text.split())


def prepare(page_html: str) -> str:
    """The page with every arithmatex formula moved to `data-tex`, its text made readable."""

    def rewrite(match: re.Match) -> str:
        tag, body = match.groups()
        tex = html.unescape(body).strip()
        display = False
        if tex[:2] in _DELIMITERS and tex.endswith(_DELIMITERS[tex[:2]]):
            display = tex[:2] == "\\["
            tex = tex[2:-2].strip()
        flag = " data-display" if display else ""
        return (f'<{tag} class="arithmatex" data-tex="{html.escape(tex)}"{flag}>'
                f"{html.escape(readable(tex), quote=False)}</{tag}>")

    return _FORMULA.sub(rewrite, page_html)
