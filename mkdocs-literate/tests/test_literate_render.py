"""
The renderer of the literate generator (mkdocs-literate/mkdocs_literate/render.py)
and the plugin's links: TeX survives the site's Markdown, code keeps its text
and line numbers, names link to real anchors, links in notes resolve.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import markdown
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mkdocs.config import load_config
from mkdocs.utils.meta import get_data

from mkdocs_literate.render import (
    Linker, code_html, fill_code, highlight_lines, number_digits, page_markdown)
from mkdocs_literate.sections import parse
from literate_testing import mkdocs_build, parse_page, read_literate_page, resolve_link, strip_tags, write_project


# ## Notes through the site's own Markdown

@pytest.fixture(scope="module")
def site_markdown(tmp_path_factory):
    """A Markdown converter with the extensions of a fixture project's mkdocs.yml."""
    config = load_config(str(write_project(tmp_path_factory.mktemp("md"))))
    # What the plugin adds to Markdown (md_in_html, its notes extension).
    config = config.plugins.on_config(config)
    return lambda: markdown.Markdown(extensions=config.markdown_extensions,
                                     extension_configs=config.mdx_configs)


def render_page(md_factory, source: str) -> str:
    # As the plugin does, less the code: Markdown, then `fill_code` (with no code).
    body, _ = get_data(page_markdown(parse(source, "t.py")))
    return fill_code(md_factory().convert(body), {})


TEX_SOURCE = r'''
r"""
Inline $\{a_1, b'\}$, $a < b$, $x_i y_j * z_k$ and $f'(x) = "q"$.

$$
\mathcal{L} = x \\ y_2 = \text{it's} \quad a_{b} < c
$$
"""

# Also in comments: $\{ k \}_{i=1}^{N}$ and $p_{i^*}(x)$
x = 1
'''


def arithmatex_texts(page_html: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(
        r'<(?:span|div) class="arithmatex">(.*?)</(?:span|div)>', page_html, re.S)]


GENERATOR = Path(__file__).resolve().parents[1] / "mkdocs_literate"


def test_tex_survives_the_sites_markdown(site_markdown):
    texts = arithmatex_texts(render_page(site_markdown, TEX_SOURCE))
    assert r"\(\{a_1, b'\}\)" in texts
    assert r"\(a < b\)" in texts
    assert r"\(x_i y_j * z_k\)" in texts
    assert "\\(f'(x) = \"q\"\\)" in texts
    assert any(r"\mathcal{L} = x \\ y_2 = \text{it's} \quad a_{b} < c" in t and t.startswith(r"\[")
               for t in texts)
    assert r"\(\{ k \}_{i=1}^{N}\)" in texts
    assert r"\(p_{i^*}(x)\)" in texts


def test_page_front_matter_gives_title_and_description():
    source = '"""\n---\ntitle: "A: title"\nsummary: >\n  Two\n  lines.\n---\nText.\n"""\n'
    body, meta = get_data(page_markdown(parse(source, "t.py")))
    assert meta["title"] == "A: title"
    assert meta["description"] == "Two lines."
    assert meta["hide"] == ["toc"]
    assert "Text." in body and "summary" not in body


def test_code_placeholders_survive_markdown_and_are_filled(site_markdown):
    source = "# A note with <b>html</b> and `code`\nx = 1\n#\ny = 2\n"
    module = parse(source, "t.py")
    page_html = site_markdown().convert(get_data(page_markdown(module))[0])
    blocks = {i: f"<CODE {i}>" for i in range(len(module.sections))}
    filled = fill_code(page_html, blocks)
    assert "<CODE 0>" in filled and "<CODE 1>" in filled
    assert "data-literate-section" not in filled
    with pytest.raises(ValueError, match="section 5"):
        fill_code(page_html, {5: "x"})


def test_sections_have_their_anchor_as_id(site_markdown):
    module = parse("class A:\n    def f(self):\n        pass\n# note\nx = 1\n", "t.py")
    page_html = site_markdown().convert(get_data(page_markdown(module))[0])
    for section in module.sections:
        assert f'id="{section.anchor}"' in page_html


# ## Highlighting keeps every line

TRICKY = [
    "\n\n# leading blank lines\nx = 1\n",
    'x = """\nmulti\n\n  line <b> & </b>\n"""\ny = 2',
    "def f(a,\n      b):\n\treturn a  # tab\n",
    "s = 'a' \\\n    'b'\n",
    "",
]


@pytest.mark.parametrize("source", TRICKY)
def test_highlighted_lines_match_the_source(source):
    lines = highlight_lines(source)
    expected = source.split("\n")
    if expected and expected[-1] == "":
        expected.pop()
    assert [strip_tags(line) for line in lines] == expected


@pytest.mark.parametrize("path", sorted(GENERATOR.rglob("*.py")), ids=lambda p: p.name)
def test_highlighted_real_modules_match_the_source(path):
    source = path.read_text(encoding="utf-8")
    lines = highlight_lines(source)
    assert [strip_tags(line) for line in lines] == source.split("\n")[:len(lines)]
    assert len(lines) == len(source.rstrip("\n").split("\n"))


def test_code_html_line_numbers_and_repository_links():
    source = "def f(x):\n    '''Doc.'''\n    return x\n"
    module = parse(source, "pkg/a.py")
    section = module.sections[0]
    lines = highlight_lines(source)

    plain = code_html(section, lines)
    # Numbers are attributes shown by CSS, not text: copying code copies no numbers.
    assert re.findall(r'class="literate-lineno" data-lineno="(\d+)"', plain) == ["1", "3"]
    assert "<a" not in plain.split("</a>", 1)[1]  # only the permalink is a link
    assert "github" not in plain
    assert f'href="#{section.anchor}"' in plain

    linked = code_html(section, lines, lambda n: f"https://example.invalid/pkg/a.py#L{n}")
    assert re.findall(r'<a class="literate-lineno" data-lineno="(\d+)" href="([^"]+)"', linked) == [
        ("1", "https://example.invalid/pkg/a.py#L1"), ("3", "https://example.invalid/pkg/a.py#L3")]
    code = re.search(r"<code>(.*?)</code>", linked, re.S).group(1)
    assert strip_tags(code) == "def f(x):\n    return x"
    # Each line carries its indentation, for the hanging indent of its wrapped rows.
    assert re.findall(r'<span class="literate-line"(?: style="--i:(\d+)")?>', linked) == ["", "4"]


def test_one_number_width_per_page():
    source = "".join(f"x{i} = {i}\n" if i % 40 else f"# Note {i}\nx{i} = {i}\n" for i in range(1, 120))
    module = parse(source, "pkg/long.py")
    assert len(module.sections) > 2
    assert number_digits(module) == 3
    assert page_markdown(module).count("--literate-digits:3") == 1


def test_empty_code_column():
    module = parse('"""Only notes."""\n', "n.py")
    assert 'literate-code--empty' in code_html(module.sections[0], [])


# ## Names link to definitions

def modules():
    return {
        "pkg": parse("from .layer import Layer\nfrom . import helpers\n", name="pkg", is_package=True),
        "pkg.helpers": parse("def helper():\n    pass\nclass K:\n    def m(self):\n        pass\n",
                             name="pkg.helpers"),
        "pkg.layer": parse("from .helpers import helper as h\nfrom . import helpers\n"
                           "import pkg.helpers as ph\nclass Layer:\n    pass\n", name="pkg.layer"),
        "pkg.loop": parse("from .loop import x\n", name="pkg.loop"),
    }


def test_linker_follows_imports_and_re_exports():
    linker = Linker(modules())
    assert linker.resolve("pkg.layer", "h") == ("pkg.helpers", "helper")
    assert linker.resolve("pkg.layer", "Layer") == ("pkg.layer", "Layer")
    assert linker.resolve("pkg.layer", "helpers") == ("pkg.helpers", None)
    assert linker.resolve("pkg.layer", "ph") == ("pkg.helpers", None)
    assert linker.resolve("pkg", "Layer") == ("pkg.layer", "Layer")
    assert linker.resolve_attribute("pkg.layer", "helpers", "K") == ("pkg.helpers", "K")
    assert linker.resolve_attribute("pkg.layer", "ph", "helper") == ("pkg.helpers", "helper")
    # Methods are not module-level names; unknown names and cycles give nothing.
    assert linker.resolve("pkg.helpers", "m") is None
    assert linker.resolve("pkg.layer", "torch") is None
    assert linker.resolve("pkg.loop", "x") is None


def test_highlight_links_names_but_not_definitions_or_unrelated_attributes():
    source = "class helper:\n    pass\nhelper(1)\nhelpers.helper(2)\nx.helper\n@helper\ndef g(): pass\n"
    calls = []

    def link(name, base):
        calls.append((name, base))
        if name == "helper" and base in (None, "helpers"):
            return f"#to-{base}"
        return None

    lines = highlight_lines(source, link)
    assert "href" not in lines[0]                           # the definition itself
    assert 'href="#to-None"' in lines[2]                    # a use
    assert 'href="#to-helpers"' in lines[3]                 # module.attribute
    assert "href" not in lines[4]                           # attribute of something else
    assert 'href="#to-None"' in lines[5]                    # decorator
    assert ("helper", "x") in calls


# ## In a built site: links resolve and point at real anchors

@pytest.fixture(scope="module")
def mini_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    config = write_project(root)
    config.write_text(config.read_text() + "repo_url: https://example.invalid/owner/repo\n")
    result = mkdocs_build(config, root / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "site"


def test_identifier_links_point_at_real_anchors(mini_site):
    page = mini_site / "pkg" / "layer" / "index.html"
    links = [href for href, cls in parse_page(page).links if "literate-link" in cls]
    targets = {resolve_link(mini_site, page, href) for href in links}
    helpers = mini_site / "pkg" / "helpers" / "index.html"
    assert (helpers, "helper") in targets          # `helper(x)` and `helpers.helper(x)`
    assert (helpers, "") in targets                # `helpers`, the module
    for target, fragment in targets:
        assert target.is_file()
        if fragment:
            assert fragment in parse_page(target).ids, (target, fragment)


def test_links_in_notes_resolve_to_rendered_pages(mini_site):
    index = mini_site / "pkg" / "index.html"
    targets = {resolve_link(mini_site, index, href) for href, _ in parse_page(index).links}
    assert (mini_site / "pkg" / "layer" / "index.html", "") in targets          # layer.py
    assert (mini_site / "pkg" / "helpers" / "index.html", "helper") in targets  # helpers.md#helper
    assert (mini_site / "pkg" / "layer" / "index.html", "Layer") in targets     # layer.html#Layer
    home = mini_site / "index.html"
    assert (mini_site / "pkg" / "layer" / "index.html", "Layer") in {
        resolve_link(mini_site, home, href) for href, _ in parse_page(home).links}


def test_line_numbers_link_to_the_repository(mini_site):
    text = (mini_site / "pkg" / "helpers" / "index.html").read_text()
    source = (mini_site.parent / "pkg" / "helpers.py").read_text().split("\n")
    line = source.index("def helper(x):") + 1
    assert f'href="https://example.invalid/owner/repo/blob/main/pkg/helpers.py#L{line}"' in text


def test_tex_survives_in_the_built_page(mini_site):
    # The built page holds formulas typeset by KaTeX, which keeps each one's
    # TeX in its MathML (see test_literate_formulas.py).
    page = (mini_site / "pkg" / "helpers" / "index.html").read_text()
    assert "data-tex" not in page and page.count('class="arithmatex"') == page.count('class="katex"')
    texts = [f[2:-2] for f in read_literate_page(mini_site / "pkg" / "helpers" / "index.html").formulas]
    assert r"\{a_1, b'\}" in texts
    assert "a < b" in texts
    assert any(r"x \\ y_2 = \text{it's}" in t for t in texts)


def test_breadcrumbs_and_module_list_are_links(site_markdown):
    module = parse('"""\n---\ntitle: Pkg\n---\nThe package.\n"""\n', "pkg/__init__.py", is_package=True)
    trail = [("Home", "../index.md"), ("pkg", None)]
    contents = [("The [layer]", "layer.md", "What a\n layer does."), ("Helpers", "helpers.md", None)]
    page_html = site_markdown().convert(get_data(page_markdown(module, trail, contents))[0])
    nav = re.search(r'<nav [^>]*class="literate-trail"[^>]*>(.*?)</nav>', page_html, re.S)
    assert "data-search-exclude" in nav.group(0)
    assert re.findall(r'href="([^"]+)"', nav.group(1)) == ["../index.md"]
    assert strip_tags(nav.group(1)).split() == ["Home", "›", "pkg"]
    listed = page_html[page_html.index("In this package"):]
    assert re.findall(r'<li><a href="([^"]+)">(.*?)</a>', listed) == [
        ("layer.md", "The [layer]"), ("helpers.md", "Helpers")]
    assert "What a layer does." in listed


# ## Display math inside a paragraph, whatever the formula
#
# Any one-line formula, written between text lines as
# `$$` lines or inline as `$$...$$`, reaches arithmatex whole as display math,
# and no `$` is left in the text. (Backticks are left out: a code span wins
# over math, in arithmatex as here.)
FORMULA = st.text(alphabet=st.sampled_from(list("ab_^*|<>&{}\\ ()=+-'\"#\n")), min_size=1, max_size=30).filter(
    lambda f: f.strip() and "\n" not in f.strip("\n") and '"' not in f
    # a Markdown block marker at the start, or a `\$` at the end, would be another thing
    and not f.strip().startswith(("#", "-", "+", ">", "*")) and not f.strip().endswith("\\"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FORMULA, st.booleans())
def test_property_display_math_in_a_paragraph_is_intact(site_markdown, formula, inline):
    formula = formula.strip()
    math = f"$${formula}$$" if inline else f"$$\n{formula}\n$$"
    source = f'"""\nText before\n{math}\ntext after.\n"""\n'
    page_html = render_page(site_markdown, source)
    texts = arithmatex_texts(page_html)
    assert any(t.startswith("\\[") and formula in t for t in texts), (formula, page_html)
    assert "$" not in strip_tags(re.sub(r'<span class="arithmatex">.*?</span>', "", page_html, flags=re.S))


# Plain text that the HTML parser of `md_in_html` would take for markup: an
# `&#` that is no character reference (it swallowed the page) and a `<` never
# closed on its line (it closed the page early). They show as written; code
# keeps its own text.
@pytest.mark.parametrize("note, shown", [
    ("a &# b", "a &# b"),
    ("if a <b then c", "if a <b then c"),
    ("x <y and `a <z &# q` and &#955; and <em>em</em> and\n# ```\n# &#\n# ```", "x <y and a <z &# q and λ and em and\n&#"),
])
def test_text_that_looks_like_markup_keeps_the_page_whole(site_markdown, note, shown):
    page_html = render_page(site_markdown, f"# {note}\nx = 1\n# two\ny = 2\n")
    assert page_html.count("<div") == page_html.count("</div>")
    assert page_html.count("data-literate-section") == 2
    notes = re.findall(r'<div class="literate-notes">(.*?)</div>', page_html, re.S)
    assert strip_tags(notes[0]).strip() == shown


def test_math_with_a_lone_less_than_is_intact(site_markdown):
    texts = arithmatex_texts(render_page(site_markdown, "# $a<b$ and $$x <y$$ and\n# $\\{a\\}$\nx = 1\n"))
    assert r"\(a<b\)" in texts and r"\[x <y\]" in texts
