'''
The conventions of literate sources written by others, one small file for
each, in a site built with `mkdocs build --strict`: TeX in plain docstrings,
`$$` display math inside paragraphs, inline math with Markdown's special
characters, labml_nn-style `.html` links, images beside a module, and every
syntax of Python 3.10 and later.
'''

from __future__ import annotations

import base64
import re
import sys
import textwrap

import pytest

from literate_testing import (
    check_module, mkdocs_build, parse_page, read_literate_page, resolve_link, tex, write_project)

pytestmark = pytest.mark.slow

# A 1x1 PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

FILES = {
    # TeX in a docstring that is not raw; links the labml_nn way; a figure.
    "lit/__init__.py": r'''
        """
        # Literate sources in the wild

        Plain docstring: $\frac{1}{2} \theta \nabla \nu$ and

        $$
        \begin{align}
        a &= \beta \\
        b &= \gamma
        \end{align}
        $$

        Read [the FFN](feed_forward.html), [attention](sub/mha.html#MultiHeadAttention),
        [the sub-package](sub/index.html), [elsewhere](../not_in_this_site.html)
        and [gone](gone.html#x).

        ![A figure](figure.png)
        """

        x = 1
        ''',
    # `$$` starting and ending inside paragraphs, several in one note; inline
    # math with `_ * | \{ <`; a space before a closing `$`.
    "lit/feed_forward.py": r'''
        # Text before,
        # $$
        # a = b_1 * c_2
        # $$
        # text between, $$d = e$$, and
        # $$f(x) = \max(0, x)$$
        # text after.
        #
        # Inline: $a_1 * b_2$, $|x|$, $\{ k \}_{i=1}^{N}$, $a<b$, $c > d$ and $f(x) \otimes g $.
        def ffn(x):
            """
            Also in docstrings: the layer is
            $$\max(0, x W_1 + b_1) W_2$$
            where $W_1$ is learned.

            $$g(x) = x$$
            where $$h(x) = 2 x$$
            """
            return x
        ''',
    "docs/index.md": "# Home\n",
    "lit/sub/__init__.py": '''
        """A sub-package."""
        ''',
    "lit/sub/mha.py": '''
        """Back to [the FFN](../feed_forward.html#ffn)."""


        class MultiHeadAttention:
            pass
        ''',
}

CONFIG = """
    site_name: Wild
    theme:
      name: mkdocs
    plugins:
      - literate:
          sources:
            - path: lit
    markdown_extensions:
      - pymdownx.arithmatex:
          generic: true
    validation:
      anchors: warn
      unrecognized_links: warn
    """


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    root = tmp_path_factory.mktemp("wild")
    write_project(root, FILES, CONFIG)
    (root / "lit" / "figure.png").write_bytes(PNG)
    (root / "lit" / "syntax.py").write_bytes(SYNTAX.encode("utf-8"))
    result = mkdocs_build(root / "mkdocs.yml", root / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_tex_in_a_plain_docstring_is_shown_as_written(wild):
    page = read_literate_page(wild / "site" / "lit" / "index.html")
    assert r"\(\frac{1}{2} \theta \nabla \nu\)" in page.formulas
    align = next(f for f in page.formulas if "align" in f)
    assert align.startswith("\\[")
    assert tex(align) == tex(r"\begin{align} a &= \beta \\ b &= \gamma \end{align}")


def test_display_math_inside_paragraphs(wild):
    page = read_literate_page(wild / "site" / "lit" / "feed_forward" / "index.html")
    display = [tex(f) for f in page.formulas if f.startswith("\\[")]
    assert display == [r"a = b_1 * c_2", r"d = e", r"f(x) = \max(0, x)", r"\max(0, x W_1 + b_1) W_2", "g(x) = x",
                       "h(x) = 2 x"]
    assert "$" not in page.prose
    # The paragraph around them stays one paragraph.
    text = (wild / "site" / "lit" / "feed_forward" / "index.html").read_text()
    assert re.search(r"<p>Text before,\s*<span class=\"arithmatex\"[^>]*>.*?text after\.</p>", text, re.S)


def test_inline_math_with_markdown_characters_is_intact(wild):
    page = read_literate_page(wild / "site" / "lit" / "feed_forward" / "index.html")
    inline = [tex(f) for f in page.formulas if f.startswith("\\(")]
    for formula in (r"a_1 * b_2", "|x|", r"\{ k \}_{i=1}^{N}", "a<b", "c > d", r"f(x) \otimes g"):
        assert formula in inline, formula


def test_html_links_resolve_to_rendered_modules_or_are_left_alone(wild):
    site = wild / "site"
    index = site / "lit" / "index.html"
    links = [href for href, _ in parse_page(index).links]
    targets = {resolve_link(site, index, href) for href in links}
    assert (site / "lit" / "feed_forward" / "index.html", "") in targets
    assert (site / "lit" / "sub" / "mha" / "index.html", "MultiHeadAttention") in targets
    assert (site / "lit" / "sub" / "index.html", "") in targets
    # Modules that are not in this site: the links are as the author wrote them.
    assert "../not_in_this_site.html" in links and "gone.html#x" in links
    mha = site / "lit" / "sub" / "mha" / "index.html"
    assert (site / "lit" / "feed_forward" / "index.html", "ffn") in {
        resolve_link(site, mha, href) for href, _ in parse_page(mha).links}


def test_images_beside_a_module_are_copied(wild):
    site = wild / "site"
    index = site / "lit" / "index.html"
    images = [src for tag, src in parse_page(index).resources if tag == "img"]
    assert len(images) == 1
    target, _ = resolve_link(site, index, images[0])
    assert target.read_bytes() == PNG


# ## Every syntax, every line
#
# Python 3.10 and 3.11 syntax (the oldest Python we support parses it all),
# with CRLF line endings, tabs and Unicode; 3.12 adds type parameters, `type`
# statements and f-strings that nest their own quotes, when we run on it.
SYNTAX_LINES = [
    '"""Every kind of line: ünïcödé, $\\alpha$, 日本語."""',
    "import asyncio",
    "from dataclasses import dataclass",
    "",
    "",
    "# A decorated class with a nested class",
    "@dataclass(frozen=True)",
    "@dataclass_like",
    "class Outer:",
    "\t# A tab-indented note",
    "\tvalue: int = 0",
    "",
    "\tclass Inner:",
    "\t\t'''Nested docstring.'''",
    "\t\tdef method(self, *, key: str = '#not a comment') -> str:",
    "\t\t\treturn f\"{key}#{self!r:>10}\"  # trailing",
    "",
    "",
    "async def fetch(items):",
    "    # Async comprehension and context manager",
    "    async with lock() as l, other() as o:",
    "        return [x async for x in items if await x]",
    "",
    "",
    "def dispatch(command):",
    "    match command:",
    "        # A note inside match",
    "        case {\"action\": action, **rest} if action != \"#\":",
    "            return action",
    "        case [x, y, *others]:",
    "            return x",
    "        case Point(x=0) | None:",
    "            pass",
    "        case _:",
    "            raise ValueError(f\"{command=}\")",
    "",
    "",
    "try:",
    "    group()",
    "except* (ValueError, TypeError) as eg:",
    "    print(eg)",
    "λ = lambda x: (y := x ** 2)",
    "text = '''",
    "# not a note",
    "'''",
    "call(a,",
    "     # a comment inside brackets",
    "     b)",
]
if sys.version_info >= (3, 12):
    SYNTAX_LINES += [
        "type Pair[T] = tuple[T, T]",
        "def first[T](xs: list[T]) -> T:",
        "    return f\"{'#'.join(f'{x}' for x in xs)}\"",
    ]
SYNTAX = "\r\n".join(SYNTAX_LINES) + "\r\n"


def test_every_syntax_renders_every_line_once_with_its_number(wild):
    result = check_module(wild / "lit" / "syntax.py", wild / "site" / "lit" / "syntax" / "index.html")
    assert result["wrong"] == [] and result["twice"] == [] and result["missing_code"] == []
    assert not result["missing_words"]
    page = read_literate_page(wild / "site" / "lit" / "syntax" / "index.html")
    numbers = [n for n, _ in page.code]
    assert numbers == sorted(numbers)
    # Notes: comments at every indentation, not the `#` in strings and brackets.
    for line in ("# not a note", "# a comment inside brackets", "'#not a comment'"):
        assert any(line in text for _, text in page.code), line
    assert "A note inside match" in page.notes_text and "A tab-indented note" in page.notes_text


def test_a_file_that_does_not_parse_names_path_and_line(tmp_path):
    files = {"docs/index.md": "# Home\n", "bad/__init__.py": "x = 1\n", "bad/broken.py": textwrap.dedent('''
        def f():
            match x:
                case 1 +:
                    pass
        ''').lstrip()}
    config = CONFIG.replace("path: lit", "path: bad")
    result = mkdocs_build(write_project(tmp_path, files, config), tmp_path / "site")
    assert result.returncode != 0
    assert "bad/broken.py:3:" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
