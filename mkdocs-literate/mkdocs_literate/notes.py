r"""
---
title: "Notes: the conventions of literate authors"
summary: >
  Two additions to the site's Markdown that let notes be written as literate
  authors already write them: links to modules as .py or .html files, and $$
  display math inside a paragraph.
---

# Notes as their authors write them

The notes go through the site's own Markdown (see [render.py](render.py)).
Two conventions of literate Python in the wild, labml_nn's among them, need a
little help there; this Markdown extension gives it, on every page.

**Links to modules.** A note links to another module by its file,
`[the layer](layer.py#Layer)`, or by the page it becomes on a site like
nn.labml.ai, `[FFN](../feed_forward.html)`, `[MHA](mha.html#section)`, with
`index.html` for a package's `__init__.py`. Such a link is rewritten to the
page rendered from that module, and mkdocs then checks it like any other link
(a wrong anchor is reported). A `.py` link to a file that is not rendered is
left to mkdocs, which reports it; an `.html` link to a module that is not in
the site is left as it is, silently: it was written for another site.

**Display math inside a paragraph.** `$$ ... $$` may start and end inside a
paragraph: a line of text, the `$$` lines, a line of text; or
`$$...$$` within a line. `pymdownx.arithmatex` only takes `$$` blocks that are
paragraphs of their own, and would leave the `$` signs in the text. Here
they become display math in place, in arithmatex's own markup
(`<span class="arithmatex">\[...\]</span>`), so KaTeX typesets them as
display formulas and the paragraph around them stays whole.

**A space before the closing `$`.** arithmatex takes `$x$` but not `$x $`
(a rule that keeps prices like "$5 and $6" out of math); MathJax, for which
labml_nn's notes were written, takes both. So `$` followed by a non-space,
text on one line, spaces and a closing `$` not followed by a digit is inline
math too.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as etree
from urllib.parse import urlsplit, urlunsplit

from markdown import Extension
from markdown.blockprocessors import BlockProcessor
from markdown.inlinepatterns import InlineProcessor
from markdown.treeprocessors import Treeprocessor
from markdown.util import AtomicString


# ## Links to modules
#
# This treeprocessor runs before mkdocs' own link processing (which has
# priority 0). It needs, from the plugin, the page being rendered
# (`current_file`), the rendered sources by path and by page (`by_rel_path`,
# `by_uri`) and the site's files (`files`).
class _ModuleLinks(Treeprocessor):
    def __init__(self, md, plugin):
        super().__init__(md)
        self.plugin = plugin

    def run(self, root):
        page = self.plugin.current_file
        if page is None:
            return
        # A module's links are relative to its file; the page may be
        # elsewhere (a source's `url`).
        here = posixpath.dirname(page.src_uri)
        own = self.plugin.by_uri.get(page.src_uri)
        file_dir = posixpath.dirname(own.rel_path) if own else here
        for element in root.iter("a"):
            href = element.get("href")
            if not href:
                continue
            scheme, netloc, path, query, fragment = urlsplit(href)
            if scheme or netloc or path.startswith("/") or not path.endswith((".py", ".html")):
                continue
            source = self._module(posixpath.normpath(posixpath.join(file_dir, path)))
            if source is not None:
                new_path = posixpath.relpath(source.src_uri, here or ".")
                element.set("href", urlunsplit(("", "", new_path, query, fragment)))
            elif path.endswith(".html") and self.plugin.files.get_file_from_path(
                    posixpath.normpath(posixpath.join(here, path))) is None:
                # Hidden from mkdocs' checks under a scheme of our own;
                # `_KeptLinks` puts it back after them.
                element.set("data-literate-href", href)
                element.set("href", "literate-kept:")

    # `x.py` and `x.html` are module `x`; `pkg/index.html` is `pkg/__init__.py`.
    def _module(self, target: str):
        stem, _ = posixpath.splitext(target)
        source = self.plugin.by_rel_path.get(stem + ".py")
        if source is None and posixpath.basename(stem) == "index":
            source = self.plugin.by_rel_path.get(posixpath.join(posixpath.dirname(stem), "__init__.py"))
        return source


class _KeptLinks(Treeprocessor):
    def run(self, root):
        for element in root.iter("a"):
            original = element.attrib.pop("data-literate-href", None)
            if original is not None:
                element.set("href", original)


# ## Display math inside a paragraph
#
# `$$`, then the formula (across lines, without `$$` in it), then `$$`; not
# after a backslash (`\$$` is an escaped dollar). It runs after code spans
# (priority 190), so `$$` in backticks stays code, and before arithmatex's
# inline math (189.9), which would take the two `$` signs apart.
DISPLAY_MATH = r"(?<!\\)\$\$(?!\$)(.+?)(?<!\\)\$\$"


class _ParagraphOfFormulas(BlockProcessor):
    """
    A paragraph that starts with one `$$` formula and goes on after it, as in
    `$$A$$`, a new line, `where $$B$$`. arithmatex's block rule would take it
    whole, from the first `$$` to the last, as one formula with `$$` inside;
    here it stays a paragraph, whose formulas the rule above typesets one by one.
    """

    def test(self, parent, block):
        first = re.match(r"\s*" + DISPLAY_MATH, block, re.S)
        return bool(first) and bool(block[first.end():].strip())

    def run(self, parent, blocks):
        etree.SubElement(parent, "p").text = blocks.pop(0).strip()


INLINE_MATH_SPACED = r"(?<![\\$])\$(?![\s$])((?:\\.|[^\\$\n])+?\s)\$(?![$\d])"


class _Math(InlineProcessor):
    def __init__(self, pattern: str, md, wrap: tuple[str, str]):
        # Markdown compiles the pattern with `re.DOTALL`: `.` spans lines.
        super().__init__(pattern, md)
        self.wrap = wrap

    def handleMatch(self, m, data):
        math = m.group(1)
        if not math.strip():
            return None, None, None
        element = etree.Element("span", {"class": "arithmatex"})
        element.text = AtomicString(self.wrap[0] + math + self.wrap[1])
        return element, m.start(0), m.end(0)


# ## Text that would break the page
#
# The notes sit inside HTML blocks (`md_in_html`), whose HTML parser reads
# them before anything else, code spans and formulas included. Two kinds of
# plain text confuse it: an `&#` that makes no character reference (Python's
# parser stops there, and the rest of the page is lost) and a `<` before a
# letter that starts no tag, as in `if a <b then` (a stray `</div>` closes
# the page early). An invisible mark, `SHIELD`, goes between the `&` and the
# `#`, or after the `<`, so the parser reads plain text; Markdown then escapes
# the `&` or `<` as it does any other, and `fill_code` takes the mark out of
# the finished page. The reader, the search index and KaTeX see the text as
# typed. Real markup in prose (tags, comments) is left alone.
SHIELD = "\ue000"
_BAD_REFERENCE = re.compile(r"&#(?![0-9]+;?|[xX][0-9a-fA-F]+;?)")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
# What such a `<` may rightly start: a tag (which may span lines), a closing
# tag, a comment, a declaration or a processing instruction.
_MARKUP = re.compile(r"<(?:[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|/[A-Za-z][A-Za-z0-9-]*\s*>"
                     r"|!--.*?-->|![A-Za-z][^<>]*>|\?[^<>]*\?>)", re.S)
# Where there is no markup: a fenced block, a code span, an indented block
# after a blank line, a formula.
_NO_MARKUP = re.compile(
    r"^[ \t]*(?P<fence>```|~~~).*?^[ \t]*(?P=fence)[^\n]*$|(?P<ticks>`+)(?!`).*?(?<!`)(?P=ticks)(?!`)"
    r"|(?:(?<=\n\n)|\A)(?:(?: {4}|\t)[^\n]*(?:\n|\Z))+"
    r"|(?<!\\)\$\$.+?(?<!\\)\$\$|(?<![\\$])\$(?![\s$])[^$\n]+?(?<!\\)\$", re.S | re.M)


def protect(markdown: str) -> str:
    """The notes' Markdown, with text that the HTML parser would take for markup shielded."""
    parts, last = [], 0
    for m in _NO_MARKUP.finditer(markdown):
        parts.append(_shield_prose(markdown[last:m.start()]))
        parts.append(_TAG_START.sub("<" + SHIELD, m.group(0).replace("&#", "&" + SHIELD + "#")))
        last = m.end()
    parts.append(_shield_prose(markdown[last:]))
    return "".join(parts)


def _shield_prose(text: str) -> str:
    text = _BAD_REFERENCE.sub("&" + SHIELD + "#", text)
    out, i = [], 0
    for m in _TAG_START.finditer(text):
        if m.start() < i:
            continue
        markup = _MARKUP.match(text, m.start())
        out.append(text[i:m.start()])
        out.append(markup.group(0) if markup else "<" + SHIELD)
        i = markup.end() if markup else m.start() + 1
    out.append(text[i:])
    return "".join(out)


# ## The extension
#
# `math` is whether the site typesets formulas with `pymdownx.arithmatex`;
# without it, `$$` is left alone.
class NotesExtension(Extension):
    def __init__(self, plugin, *, math: bool):
        super().__init__()
        self.plugin = plugin
        self.math = math

    def extendMarkdown(self, md):
        md.treeprocessors.register(_ModuleLinks(md, self.plugin), "literate_module_links", 2)
        md.treeprocessors.register(_KeptLinks(md), "literate_kept_links", -1)
        if self.math:
            md.inlinePatterns.register(_Math(DISPLAY_MATH, md, ("\\[", "\\]")),
                                       "literate_display_math", 189.95)
            # Before arithmatex's block rule (79.9)
            md.parser.blockprocessors.register(_ParagraphOfFormulas(md.parser), "literate_formula_paragraph", 80)
            md.inlinePatterns.register(_Math(INLINE_MATH_SPACED, md, ("\\(", "\\)")),
                                       "literate_inline_math", 189.8)
