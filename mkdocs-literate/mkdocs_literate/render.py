"""
---
title: "Render: sections to a page"
summary: >
  How the literate generator turns sections into a page: notes as Markdown for
  the site's own Markdown pipeline, code highlighted by Pygments with line
  numbers, and names linked to their definitions on other pages.
---

# Sections → page

Rendering happens in two halves, because the two columns need different tools.

* **Notes** are Markdown, and they must go through *the site's own* Markdown
  pipeline: the same extensions as every other page (so `$...$` reaches
  `pymdownx.arithmatex` untouched), and mkdocs' own link checking (so a
  broken link fails `mkdocs build --strict`). So `page_markdown` writes a
  Markdown page in which each section is an HTML block whose notes are
  Markdown again (the `md_in_html` extension), and whose code column is a
  placeholder.
* **Code** is HTML we write ourselves from Pygments tokens, because we want
  things Pygments' own formatter does not do: line numbers that keep the
  original numbering across the gaps where notes were lifted out, a link per
  line to the repository, links from names to their definitions, and long
  lines that wrap beside their number with a hanging indent.
  `code_html` renders a section's code and `fill_code` puts it into the page
  after Markdown is done.

The CSS classes are those of Pygments' HTML formatter, inside a `.highlight`
block as `pymdownx.highlight` writes it, so the theme colours the code as it
colours every other code block, in light and dark mode alike.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import yaml
from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Token

from .notes import SHIELD, protect
from .sections import Module, Section


# ## The page's Markdown
#
# The page starts with mkdocs front matter: the title, the summary as the
# meta description (mkdocs-material puts it in `<meta name="description">`),
# and `hide: [toc]`, since the notes column already is the table of contents.
def page_markdown(module: Module, trail: Sequence[tuple[str, str | None]] = (),
                  contents: Sequence[tuple[str, str, str | None]] = ()) -> str:
    """
    The Markdown source of a literate page, with code placeholders.

    `trail` are the breadcrumbs, `(label, link)`, the page itself last with
    link `None`; `contents` the modules of a package, `(title, link, summary)`.
    Links are to `.md` pages, relative to this one.
    """
    meta = {"title": module.title, "hide": ["toc"], "literate": module.path}
    if module.summary:
        meta["description"] = " ".join(str(module.summary).split())
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False)
    parts = [f"---\n{front}---\n",
             f'<div class="literate" style="--literate-digits:{number_digits(module)}" markdown>\n']
    if trail:
        parts.append(_trail_markdown(trail))
    for i, section in enumerate(module.sections):
        parts.append(_section_markdown(i, section))
    if contents:
        parts.append(_contents_markdown(contents))
    parts.append("</div>\n")
    return "\n".join(parts)


# A section is a `div` holding the notes (Markdown, hence `markdown` on the
# element and blank lines around the text) and a placeholder for the code.
# The section's `id` is its permalink anchor; mkdocs sees it here, so links
# to `page.md#anchor` are checked too.
def _section_markdown(index: int, section: Section) -> str:
    kind = f" literate-{section.kind}" if section.kind else ""
    return (
        f'<div class="literate-section{kind}" id="{html.escape(section.anchor)}" markdown>\n'
        f'<div class="literate-notes" markdown>\n\n'
        f"{protect(section.notes_markdown)}\n\n"
        f"</div>\n"
        f"{code_placeholder(index)}\n"
        f"</div>\n"
    )


# ## Where the page is
#
# As on nn.labml.ai, a page starts with its place in the site: the home page
# and each package it is in, as links (breadcrumbs), then its own file. A
# package's page ends with its modules, each with its title and summary. The
# plugin, which knows the site, gives the links; they go to `.md` pages, so
# mkdocs checks them and makes them URLs like any other link. Breadcrumbs are
# left out of the search index.
def _trail_markdown(trail: Sequence[tuple[str, str | None]]) -> str:
    crumbs = [f"[{_link_text(label)}]({link})" if link
              else f'<span aria-current="page">{html.escape(label)}</span>'
              for label, link in trail]
    return ('<nav class="literate-trail" aria-label="Breadcrumbs" data-search-exclude markdown="span">'
            + ' <span class="literate-trail__sep">›</span> '.join(crumbs) + "</nav>\n")


def _contents_markdown(contents: Sequence[tuple[str, str, str | None]]) -> str:
    items = "\n".join(f"* [{_link_text(title)}]({link})"
                      + (f": {html.escape(' '.join(summary.split()))}" if summary else "")
                      for title, link, summary in contents)
    return ('<div class="literate-section literate-contents" markdown>\n'
            '<div class="literate-notes" markdown>\n\n'
            f"## In this package\n\n{items}\n\n"
            "</div>\n"
            '<div class="literate-code literate-code--empty"></div>\n'
            "</div>\n")


# Text for a Markdown link: HTML-escaped, with the brackets that would end it escaped.
def _link_text(text: str) -> str:
    return html.escape(text).replace("[", "\\[").replace("]", "\\]")


# The placeholder is an empty element Markdown passes through as it is.
def code_placeholder(index: int) -> str:
    return f'<div class="literate-code" data-literate-section="{index}"></div>'


# After Markdown has rendered the page, each placeholder is replaced by the
# section's permalink and code (and the notes' shields, see
# [notes.py](notes.py), are taken out). A missing placeholder means Markdown changed
# it (an unclosed tag in a note can do that): better to stop than to lose code.
def fill_code(page_html: str, blocks: Mapping[int, str]) -> str:
    for index, block in blocks.items():
        placeholder = code_placeholder(index)
        if placeholder not in page_html:
            raise ValueError(f"code placeholder of section {index} was lost in Markdown; "
                             f"is there an unclosed HTML tag in a note?")
        page_html = page_html.replace(placeholder, block, 1)
    # The marks that kept notes' text from looking like markup have done their job.
    return page_html.replace(SHIELD, "")


# ## Highlighting
#
# Pygments splits the whole file into tokens. Highlighting the file at once,
# not section by section, keeps strings and brackets that span sections
# right. We keep `stripnl` off, or Pygments would drop leading blank lines and
# shift every line number.
def highlight_lines(source: str, link: Callable[[str, str | None], str | None] | None = None) -> list[str]:
    """
    The HTML of each source line (index `n - 1` for line `n`).

    `link(name, base)` returns the address a name should link to, or `None`:
    `base` is `None` for a plain name, or the name before the dot for an
    attribute (`mha` in `mha.MultiHeadAttention`).
    """
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    if not source:
        return []
    lexer = PythonLexer(stripnl=False, ensurenl=True, tabsize=0)
    lines: list[list[str]] = [[]]
    # The last two significant tokens, to recognise `base.attribute`.
    previous: list[tuple] = []
    for ttype, value in lexer.get_tokens(source):
        href = None
        if link is not None:
            href = _link_for(ttype, value, previous, link)
            if value.strip():
                previous = (previous + [(ttype, value)])[-2:]
        css = _css_class(ttype)
        # A token can span lines (a docstring, a newline): split it, closing
        # the span at each line end so every line is valid HTML on its own.
        for i, piece in enumerate(value.split("\n")):
            if i:
                lines.append([])
            if piece:
                text = html.escape(piece, quote=False)
                if css:
                    text = f'<span class="{css}">{text}</span>'
                if href:
                    text = f'<a class="literate-link" href="{html.escape(href)}">{text}</a>'
                lines[-1].append(text)
    # The text ends with a newline, so the last (empty) line is not a line.
    if lines and not lines[-1]:
        lines.pop()
    return ["".join(parts) for parts in lines]


# Which names are links: a plain `Name` token (not the name being defined:
# that is `Name.Class` or `Name.Function`), an attribute after a name (the
# linker decides whether the name is a module), and a simple decorator.
def _link_for(ttype, value, previous, link) -> str | None:
    if ttype is Token.Name:
        if len(previous) == 2 and previous[1][1] == "." and previous[0][0] in Token.Name:
            return link(value, previous[0][1])
        if previous and previous[-1][1] == ".":
            return None
        return link(value, None)
    if ttype is Token.Name.Decorator and "." not in value:
        return link(value.lstrip("@"), None)
    return None


# Pygments' short class names (`k` for keyword, `nf` for a function name):
# a token type without one of its own takes its parent's.
def _css_class(ttype) -> str:
    while ttype not in STANDARD_TYPES:
        ttype = ttype.parent
    return STANDARD_TYPES[ttype]


# ## A section's code
#
# One `<pre><code>` per section, one element per line: the line's number,
# then its code. Numbers and code share the line, so a long line can wrap
# and its number stays beside its first row. A wrapped line continues with a
# hanging indent: its own indentation and four more (`--i` is the
# indentation, in characters; the stylesheet does the rest).
#
# The number is not text but CSS content (`data-lineno`, shown by `::before`):
# copying code, with the theme's copy button or by selecting it, gives the code
# alone, and search does not index numbers. Each number links to its line in
# the repository when `line_url(n)` gives an address. The CSS classes inside
# the code are Pygments', so the theme colours it like any other code block.
def code_html(section: Section, lines_html: list[str],
              line_url: Callable[[int], str | None] | None = None) -> str:
    """The permalink and code column of one section."""
    # The permalink is left out of the search index (`data-search-exclude`).
    permalink = (f'<a class="literate-permalink" href="#{html.escape(section.anchor)}" '
                 f'title="Link to this section" aria-label="Link to this section" '
                 f'data-search-exclude>#</a>')
    if not section.code:
        return permalink + '<div class="literate-code literate-code--empty"></div>'
    rows = []
    for line in section.code:
        url = line_url(line.number) if line_url else None
        if url:
            label = f"Line {line.number} in the repository"
            number = (f'<a class="literate-lineno" data-lineno="{line.number}" '
                      f'href="{html.escape(url)}" title="{label}" aria-label="{label}"></a>')
        else:
            number = f'<span class="literate-lineno" data-lineno="{line.number}"></span>'
        expanded = line.text.expandtabs(4)
        indent = len(expanded) - len(expanded.lstrip(" "))
        style = f' style="--i:{indent}"' if indent else ""
        rows.append(f'<span class="literate-line"{style}>{number}{lines_html[line.number - 1]}</span>')
    return (
        permalink
        + f'<div class="literate-code" style="--rows:{len(rows)}"><div class="highlight"><pre><code>'
        + "\n".join(rows)
        + "</code></pre></div></div>"
    )


# The widest line number of a page, in digits: every section's number gutter
# gets this width, so code lines up from one section to the next.
def number_digits(module: Module) -> int:
    return max((len(str(line.number)) for s in module.sections for line in s.code), default=1)


# ## Linking names to definitions
#
# The linker knows every rendered module and answers: where is `name`, as seen
# from module `module`, defined? It looks in the module's own definitions,
# then follows imports, through re-exports (`from .switch import
# SwitchFeedForward` in `__init__.py`) to the module that defines the name.
# The answer is `(module, anchor)`; `anchor` is `None` for a whole module.
class Linker:
    def __init__(self, modules: Mapping[str, Module]):
        self.modules = modules

    def resolve(self, module: str, name: str, _depth: int = 0) -> tuple[str, str | None] | None:
        m = self.modules.get(module)
        # Re-export chains are short; the depth limit only guards against
        # import cycles.
        if m is None or _depth > 8:
            return None
        # Defined here,
        if name in m.names:
            return module, m.names[name]
        if name not in m.imports:
            return None
        target, attribute = m.imports[name]
        # or imported as a module (`import a.b as c`),
        if attribute is None:
            return (target, None) if target in self.modules else None
        # or a submodule imported from its package (`from . import mha`),
        if f"{target}.{attribute}" in self.modules:
            return f"{target}.{attribute}", None
        # or a name imported from a module, to look up there.
        return self.resolve(target, attribute, _depth + 1)

    def resolve_attribute(self, module: str, base: str, attribute: str):
        # `base.attribute` links only when `base` is a rendered module.
        found = self.resolve(module, base)
        if found is None or found[1] is not None:
            return None
        return self.resolve(found[0], attribute)
