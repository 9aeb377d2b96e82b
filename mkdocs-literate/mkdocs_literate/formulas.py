r"""
---
title: "Formulas: typeset by KaTeX at build time, readable in search"
summary: >
  How the literate generator typesets the formulas of every page: KaTeX runs
  inside the build, the page holds finished HTML, and the search index gets
  readable Unicode text.
---

# Formulas

`pymdownx.arithmatex` (in its `generic` mode) leaves each formula in the page
as TeX between `\(...\)` (inline) or `\[...\]` (display), in an element of
class `arithmatex`. Two readers need something else than that TeX:

* the reader of the page, who should see typeset math;
* the search index, which takes the page's text: raw TeX there makes search
  results hard to read (`\alpha N \sum_i f_i P_i`).

**Typeset at build time.** [KaTeX](https://katex.org) turns TeX into HTML and
CSS, with one synchronous call per formula. It could do so in the reader's
browser, and did here before: a script (KaTeX, 273 kB) typeset the page once
its HTML was there. The typesetting itself was quick, but every visit paid
for the script; until it ran, the reader saw the formulas as text, then the
page reflowed; without JavaScript they stayed text; and the theme's instant
navigation had to call it again for each new page. The result is the same
for every reader, so we compute it once: the build runs KaTeX's own
`katex.min.js` in [V8](https://v8.dev), through the
[mini-racer](https://pypi.org/project/mini-racer/) bindings, and the page
holds the finished formulas. It needs only KaTeX's stylesheet and fonts and
no script at all for math; each formula is typeset as soon as the browser
lays out its part of the page, the first screen's with the first paint. What
remains of the time until a long page is shown whole is the page's own: its
HTML (KaTeX's markup makes it larger) and the theme's script
(`experiments/bench_site_math.py` measures it).

The cost is at build time: starting V8 and loading KaTeX takes some 60 ms,
once per build (one `Typesetter`, one V8 context); a formula takes under a
millisecond, and the same formula (same TeX, same mode) is typeset once per
build, as a site repeats its notation from page to page. labml_nn's 3,204
formulas add some 2 s to its build of 7 s.

**In two steps, around search.** After Markdown (`on_page_content`),
`prepare` moves every formula's TeX into the element's `data-tex` attribute
(and `data-display` marks display math), and gives the element a readable
Unicode approximation of it as its text, made by
[pylatexenc](https://pylatexenc.readthedocs.io) (`\alpha_i` → `α_i`,
`\frac{a}{b}` → `a/b`). That page content is what the search index reads.
Only when the whole page is written (`on_post_page`, after search has taken
its text) does `typeset` replace each of those elements' text with KaTeX's
HTML; so the index never sees TeX, nor the MathML and HTML copies of each
formula that KaTeX writes (the MathML, read by screen readers, keeps the
TeX in an `annotation`).

**Errors are not lost.** A formula KaTeX cannot read is shown as its TeX, in
the error colour, with KaTeX's message in its title (one that only uses a
command KaTeX does not know is typeset, that command shown as written in the
error colour); the plugin reports it as
a build warning naming the source's `path:line` (`line_of` finds the formula
in the file) and KaTeX's message, so a `--strict` build fails on it.

**Macros.** As in a TeX document, a `\def` or `\newcommand` in one formula
holds in the formulas after it on the same page (KaTeX's `globalGroup`), and
on no other page; a formula KaTeX cannot read defines nothing. Neither a
definition nor the formulas after it on its page go through the cache.

KaTeX is served from the site (no CDN): `assets/katex/` holds the files of
the npm package `katex` 0.19.1: `dist/katex.min.js`, which the build runs,
`dist/katex.min.css` and its fonts in `woff2`, which the pages load (browsers
that read `woff2`, which all current ones do, never ask for the `.woff` and
`.ttf` files the stylesheet also names), with KaTeX's MIT licence. To update
it, replace those files with a newer release's.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

from py_mini_racer import MiniRacer
from pylatexenc.latex2text import LatexNodes2Text

# Where KaTeX is: in this package, and in the built site, relative to its root.
KATEX_DIR = Path(__file__).parent / "assets" / "katex"
KATEX_CSS = "katex/katex.min.css"

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


# ## Step 1, after Markdown: TeX aside, text for search
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


# ## KaTeX in V8
#
# The function the build calls, defined in V8 next to KaTeX. `fresh` starts
# a page: its macros are forgotten. It returns, as JSON, KaTeX's HTML, the
# parse error's message (or `null`) and how many macros the page has
# defined so far. A formula KaTeX cannot read is typeset a second time with
# `throwOnError: false`, which shows its TeX in the error colour (or, for an
# unknown command, the formula with that command in the error colour). `strict:
# "ignore"`: notes as labml_nn writes them put Unicode letters in math, which
# KaTeX reads but would warn about.
_RENDER = """
var literateMacros = {};
function literateRender(tex, display, fresh) {
  if (fresh) literateMacros = {};
  var options = {displayMode: display, throwOnError: true, strict: "ignore",
                 macros: literateMacros, globalGroup: true};
  var before = Object.assign({}, literateMacros);
  function restore() {
    for (var name in literateMacros) delete literateMacros[name];
    Object.assign(literateMacros, before);
  }
  try {
    return JSON.stringify([katex.renderToString(tex, options), null, Object.keys(literateMacros).length]);
  } catch (e) {
    if (!(e instanceof katex.ParseError)) throw e;
    // A formula that fails defines nothing.
    restore();
    options.throwOnError = false;
    var shown = katex.renderToString(tex, options);
    restore();
    return JSON.stringify([shown, e.message, Object.keys(literateMacros).length]);
  }
}
"""


class Typesetter:
    """KaTeX for one build: one V8 context, started at the first formula, and a cache."""

    def __init__(self):
        self._v8 = None
        self.cache: dict[tuple[str, bool], str] = {}
        # Whether the next call starts a page, and whether the page so far
        # has defined a macro (then nothing on it comes from the cache).
        self._fresh = True
        self._macros = False

    def start_page(self):
        self._fresh, self._macros = True, False

    def render(self, tex: str, display: bool) -> tuple[str, str | None]:
        """KaTeX's HTML for a formula, and KaTeX's message if it cannot read it."""
        key = (tex, display)
        if not self._macros and key in self.cache:
            return self.cache[key], None
        if self._v8 is None:
            self._v8 = MiniRacer()
            self._v8.eval((KATEX_DIR / "katex.min.js").read_text(encoding="utf-8"))
            self._v8.eval(_RENDER)
        # (`call` passes the arguments as JSON and holds no handle on a JS
        # object: V8 objects kept alive in Python would delay its exit.)
        shown, error, macros = json.loads(self._v8.call("literateRender", tex, display, self._fresh))
        if error is not None:
            # KaTeX underlines the offending TeX with combining characters,
            # which a terminal shows poorly.
            error = error.replace("\u0332", "")
        self._fresh = False
        self._macros = macros > 0
        if error is None and not self._macros:
            self.cache[key] = shown
        return shown, error

    def close(self):
        if self._v8 is not None:
            self._v8.close()
            self._v8 = None
        self.cache.clear()


# ## Step 2, the page written: typeset
_PREPARED = re.compile(r'<(span|div) class="arithmatex" data-tex="([^"]*)"( data-display)?>.*?</\1>', re.S)


def typeset(page_html: str, typesetter: Typesetter,
            on_error: Callable[[str, str], None] | None = None) -> str:
    """
    The page with every prepared formula typeset by KaTeX. For a formula KaTeX
    cannot read, `on_error(tex, message)` is called; the page shows its TeX.
    """
    typesetter.start_page()

    def rewrite(match: re.Match) -> str:
        tag, tex, display = match.groups()
        tex = html.unescape(tex)
        shown, error = typesetter.render(tex, bool(display))
        if error is not None and on_error is not None:
            on_error(tex, error)
        return f'<{tag} class="arithmatex">{shown}</{tag}>'

    return _PREPARED.sub(rewrite, page_html)


# ## Fonts, asked for early
#
# KaTeX's stylesheet shows a formula's glyphs only once their font is in
# (`font-display: block`), and the browser asks for a font only when layout
# finds text that uses it: after the stylesheet and much of the page. The
# page can ask sooner, with a `<link rel="preload">` in its head for each
# font its formulas use; on this site's biggest page that halves the time
# until the first screen's formulas show on a first visit. Which fonts: the
# stylesheet's own rules say which classes use which face
# (`.katex .mathnormal{font-family:KaTeX_Math;font-style:italic}`); a rule
# counts when one element of the page has all the classes of the rule's
# last part. KaTeX_Main's regular face is the formulas' base font.
_CSS_RULE = re.compile(r"([^{}@]+)\{([^{}]*font-family:(KaTeX_\w+)[^{}]*)\}")
_CLASSES = re.compile(r'class="([^"]*)"')


def _font_rules() -> list[tuple[frozenset[str], str]]:
    rules = []
    css = (KATEX_DIR / "katex.min.css").read_text(encoding="utf-8")
    for selectors, body, family in _CSS_RULE.findall(css):
        style = (("Bold" if "font-weight:700" in body else "")
                 + ("Italic" if "font-style:italic" in body else "")) or "Regular"
        font = f"{family}-{style}.woff2"
        for selector in selectors.split(","):
            parts = [p for p in re.split(r"[\s>+~]+", selector.strip()) if "." in p]
            if parts and (KATEX_DIR / "fonts" / font).is_file():
                rules.append((frozenset(re.findall(r"\.([\w-]+)", parts[-1])), font))
    return rules


def fonts(page_html: str) -> list[str]:
    """The KaTeX font files (`KaTeX_Math-Italic.woff2`) the page's formulas use."""
    if 'class="katex' not in page_html:
        return []
    elements = {frozenset(c.split()) for c in _CLASSES.findall(page_html)}
    used = {"KaTeX_Main-Regular.woff2"}
    for classes, font in _FONT_RULES:
        if font not in used and any(classes <= e for e in elements):
            used.add(font)
    return sorted(used)


def line_of(tex: str, text: str) -> int | None:
    """
    The line of `text` (a source file) where the formula `tex` starts, or
    `None`. Its lines may be indented and, in comments, start with `#`.
    """
    lines = [re.escape(line.strip()) for line in tex.strip().split("\n")]
    found = re.search(r"[ \t]*\n[ \t]*(?:#[ \t]?)?[ \t]*".join(lines), text)
    return text.count("\n", 0, found.start()) + 1 if found else None


_FONT_RULES = _font_rules()
