"""
Formulas after Markdown: TeX moved to `data-tex`, text made readable for
search, for inline and display math as `pymdownx.arithmatex` writes them; then
typeset by KaTeX at build time, errors reported, macros kept to their page.
"""

from __future__ import annotations

import html
import re

import markdown

import pytest

from mkdocs_literate.formulas import Typesetter, fonts, line_of, prepare, readable, typeset


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


@pytest.fixture(scope="module")
def katex():
    typesetter = Typesetter()
    yield typesetter
    typesetter.close()


def typeset_page(source: str, typesetter: Typesetter, errors: list | None = None) -> str:
    return typeset(prepare(arithmatex(source)), typesetter,
                   None if errors is None else lambda tex, message: errors.append((tex, message)))


def annotations(page_html: str) -> list[str]:
    """The TeX KaTeX keeps in each typeset formula's MathML."""
    return [html.unescape(t) for t in re.findall(r'<annotation encoding="application/x-tex">(.*?)</annotation>',
                                                 page_html, re.S)]


def test_typeset_at_build_time_inline_and_display(katex):
    page = typeset_page("Inline $a < b_i$.\n\n$$\n\\frac{1}{N}\n$$\n", katex)
    assert "data-tex" not in page and "\\(" not in page
    inline, display = re.findall(r'<(span|div) class="arithmatex">(<span class="katex[^"]*">)', page)
    assert inline == ("span", '<span class="katex">') and display == ("div", '<span class="katex-display">')
    assert annotations(page) == ["a < b_i", "\\frac{1}{N}"]
    # KaTeX's HTML: the fraction's parts are there, laid out.
    assert 'class="mfrac"' in page and "vlist" in page


def test_errors_are_reported_and_show_their_tex(katex):
    errors = []
    page = typeset_page("Good $x^2$, bad $\\frac{a$, unknown $\\nosuchmacro{y}$.", katex, errors)
    assert [tex for tex, _ in errors] == ["\\frac{a", "\\nosuchmacro{y}"]
    assert all(m.startswith("KaTeX parse error: ") for _, m in errors)
    assert errors[1][1] == ("KaTeX parse error: Undefined control sequence: \\nosuchmacro at position 1: "
                            "\\nosuchmacro{y}")
    # A formula that does not parse shows its TeX; one with an unknown
    # command, that command as written, both in KaTeX's error colour.
    shown = re.findall(r'<span class="katex-error" title="([^"]*)"[^>]*>(.*?)</span>', page)
    assert [html.unescape(tex) for _, tex in shown] == ["\\frac{a"]
    assert 'style="color:#cc0000;">\\nosuchmacro</span>' in page
    assert annotations(page) == ["x^2", "\\nosuchmacro{y}"]
    # Reported again on each page that has it (errors are not cached).
    again = []
    typeset_page("Bad $\\frac{a$.", katex, again)
    assert len(again) == 1


def test_same_formula_typeset_once_per_build():
    typesetter = Typesetter()
    try:
        first = typeset_page("$x_1$ and $x_1$\n\n$$x_1$$\n", typesetter)
        assert sorted(typesetter.cache) == [("x_1", False), ("x_1", True)]
        # From the cache: the same HTML as a fresh KaTeX gives.
        typesetter.cache[("x_1", False)] = '<span class="katex">cached</span>'
        assert typeset_page("$x_1$", typesetter).count("cached") == 1
    finally:
        typesetter.close()
    fresh = Typesetter()
    try:
        assert typeset_page("$x_1$ and $x_1$\n\n$$x_1$$\n", fresh) == first
    finally:
        fresh.close()


def test_macros_hold_on_their_page_only(katex):
    page = typeset_page("$\\def\\half{\\frac12}$ then $\\half x$ and $\\newcommand{\\RR}{\\mathbb{R}} \\RR$ $\\RR$.", katex)
    assert "katex-error" not in page and page.count('class="mfrac"') == 1
    assert ("\\half x", False) not in katex.cache and ("\\RR", False) not in katex.cache
    assert annotations(page)[-1] == "\\RR" and 'mathvariant="double-struck"' in page
    # A definition in a formula that fails is not kept.
    errors = []
    page = typeset_page("$\\def\\half{\\frac12}$ $\\newcommand{\\two}{2} \\frac{a$ $\\newcommand{\\two}{3}\\two$",
                        katex, errors)
    assert [tex for tex, _ in errors] == ["\\newcommand{\\two}{2} \\frac{a"]
    # On the next page, they are gone.
    errors = []
    typeset_page("$\\half x$", katex, errors)
    assert [tex for tex, _ in errors] == ["\\half x"]


@pytest.mark.parametrize("tex, line", [
    ("a_1", 2),                            # inline, in a docstring
    ("\\sum_i x_i\n= 1", 6),               # display, in a comment block
    ("\\frac{a}{b}", 9),                   # indented docstring
    ("not there", None),
])
def test_line_of_finds_a_formula_in_its_source(tex, line):
    source = (
        '"""\nFine: $a_1$.\n"""\n'
        "# Sum:\n#\n"
        "#   $$\\sum_i x_i\n#   = 1$$\n"
        "def f():\n"
        '    """$\\frac{a}{b}$"""\n'
    )
    assert line_of(tex, source) == line


@pytest.mark.parametrize("source, expected", [
    ("$x + 1$", ["Main-Regular", "Math-Italic"]),
    ("$1 + 2$", ["Main-Regular"]),
    ("$\\mathbb{R}^n$ and $\\mathcal{L}$", ["AMS-Regular", "Caligraphic-Regular", "Main-Regular", "Math-Italic"]),
    ("$$\n\\sum_i \\Big( a \\Big)\n$$\n", ["Main-Regular", "Math-Italic", "Size2-Regular"]),
    ("$\\sum_i a$ and $\\mathbf{W}$", ["Main-Bold", "Main-Regular", "Math-Italic", "Size1-Regular"]),
    ("No math.", []),
])
def test_fonts_a_page_uses(katex, source, expected):
    assert fonts(typeset_page(source, katex)) == [f"KaTeX_{font}.woff2" for font in expected]
