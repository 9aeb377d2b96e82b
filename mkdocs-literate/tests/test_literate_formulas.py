"""
Formulas after Markdown: TeX moved to `data-tex` for KaTeX, text made readable
for search, for inline and display math as `pymdownx.arithmatex` writes them.
"""

from __future__ import annotations

import html
import re

import markdown

from mkdocs_literate.formulas import prepare, readable


def arithmatex(text: str) -> str:
    md = markdown.Markdown(extensions=["pymdownx.arithmatex"],
                           extension_configs={"pymdownx.arithmatex": {"generic": True}})
    return md.convert(text)


def formulas(page_html: str) -> list[tuple[str, str, bool, str]]:
    """(tag, TeX, display, text) of each prepared formula."""
    found = re.findall(r'<(span|div) class="arithmatex" data-tex="([^"]*)"( data-display)?>(.*?)</\1>',
                       page_html, re.S)
    return [(tag, html.unescape(tex), bool(display), html.unescape(text)) for tag, tex, display, text in found]


def test_inline_and_display_math_keep_their_tex_and_read_as_text():
    source = r"""
Inline $\alpha N \sum_i f_i P_i$ and $a < b$ and $\text{it's} = "q"$.

$$
\begin{align}
p_i(x) &= \frac{e^{h_i(x)}}{\sum_j e^{h_j(x)}} \\
\mathbb{E}\big[\operatorname{softmax}(x)\big] &= 1
\end{align}
$$
"""
    page = prepare(arithmatex(source))
    assert "\\(" not in page and "\\[" not in page
    found = formulas(page)
    assert found[0] == ("span", r"\alpha N \sum_i f_i P_i", False, "α N ∑_i f_i P_i")
    assert found[1] == ("span", "a < b", False, "a < b")
    assert found[2][1] == r'\text{it' + "'" + r's} = "q"' and found[2][3] == "it's = \"q\""
    tag, tex, display, text = found[3]
    assert (tag, display) == ("div", True)
    assert tex.startswith(r"\begin{align}") and tex.endswith(r"\end{align}")
    assert r"\\" in tex and "&" in tex
    assert "\\" not in text and "𝔼" in text and "softmax" in text


def test_pages_without_math_are_unchanged():
    page = arithmatex("No math here, only $5 and $6 prices in `$x$` code.")
    assert prepare(page) == page


def test_readable_text_is_one_line_and_falls_back_to_tex():
    assert readable("\\frac{a}{b}\n  + c") == "a/b + c"
    assert readable(r"\unknowncommand{x}") == "x"
