"""
The site as a whole: the repository's site builds with `mkdocs build --strict`,
has a page per module, links and anchors that resolve, search over notes and
code (formulas as readable text, not TeX), formulas typeset at build time
with KaTeX's stylesheet served from the site, and
nothing loaded from elsewhere. (The plugin's errors and options are tested
on small fixture projects in mkdocs-literate/tests.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from site_fixtures import ROOT, page_file, parse_page, real_site, require_real_site, resolve_link

pytestmark = pytest.mark.slow

PACKAGE = ROOT / "labml_nn_switch"


def expected_page(source: Path) -> Path:
    rel = source.relative_to(ROOT).with_suffix("")
    if rel.name == "__init__":
        rel = rel.parent
    return Path(rel.as_posix() + "/index.html")


# ## The real site

def test_real_site_builds_strict():
    site = real_site()
    assert site.process.returncode == 0, site.output
    print(f"\nreal site: mkdocs build --strict took {site.seconds:.1f} s")


def test_every_module_has_a_page():
    site = require_real_site()
    for source in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in source.parts:
            continue
        assert (site.path / expected_page(source)).is_file(), source
    assert (site.path / "index.html").is_file()


def test_nav_lists_the_module_pages_and_hand_written_pages():
    site = require_real_site()
    home = site.path / "index.html"
    targets = {resolve_link(site.path, home, href)[0] for href, _ in parse_page(home).links}
    for name in ("mha", "feed_forward", "switch", "transformer", "experiment"):
        assert site.path / "labml_nn_switch" / name / "index.html" in targets, name
    assert site.path / "generator" / "sections" / "index.html" in targets
    for doc in (ROOT / "docs").glob("*.md"):
        assert page_file(site.path, "/" if doc.stem == "index" else f"/{doc.stem}/") in targets, doc


def all_pages(site: Path):
    return sorted(p for p in site.rglob("*.html") if "assets" not in p.relative_to(site).parts)


def test_links_between_pages_and_code_links_resolve():
    site = require_real_site().path
    checked = 0
    for page in all_pages(site):
        for href, cls in parse_page(page).links:
            if re.match(r"^[a-z]+:", href) or href.startswith("//"):
                continue
            target, fragment = resolve_link(site, page, href)
            assert target.is_file(), (page, href)
            if fragment and ("literate-link" in cls or "literate-permalink" in cls):
                assert fragment in parse_page(target).ids, (page, href)
                checked += 1
    assert checked > 50


def test_code_names_link_across_pages():
    site = require_real_site().path
    page = site / "labml_nn_switch" / "switch" / "index.html"
    targets = {resolve_link(site, page, href) for href, cls in parse_page(page).links
               if "literate-link" in cls}
    assert any(t.parent.name == "feed_forward" and f for t, f in targets), targets


def test_search_indexes_notes_and_code():
    site = require_real_site().path
    index = json.loads((site / "search" / "search_index.json").read_text())
    text = " ".join(d["text"] for d in index["docs"] if d["location"].startswith("labml_nn_switch/switch/"))
    assert "class SwitchFeedForward" in text        # code
    assert "capacity" in text and "expert" in text  # notes
    assert "router" in text


def test_search_index_has_formulas_as_text_not_tex():
    site = require_real_site().path
    index = json.loads((site / "search" / "search_index.json").read_text())
    notes = [d for d in index["docs"] if d["location"].startswith("labml_nn_switch/")]
    # The notes' text: code, which may spell anything, is indexed in <pre><code> blocks
    text = re.sub(r"<pre><code>.*?</code></pre>", " ", " ".join(d["text"] for d in notes), flags=re.S)
    # The Switch layer's formulas, readable: p_i(x) = softmax(h(x))_i, ∑, α ...
    assert "∑" in text and "α" in text
    for tex in ("\\(", "\\[", "\\frac", "\\sum", "\\alpha", "\\text{", "\\begin{", "$$"):
        assert tex not in text, (tex, text[max(0, text.find(tex) - 100):text.find(tex) + 100])
    # nor KaTeX's MathML and HTML copies of each formula (the pages have them).
    for typeset in ("katex", "mathml", "annotation", "mfrac", "<math", "<mi>"):
        assert typeset not in text.lower(), typeset


def test_no_external_resources_and_katex_from_the_site():
    built = require_real_site()
    site = built.path
    external = re.compile(r"^(https?:)?//")
    for page in all_pages(site):
        for tag, url in parse_page(page).resources:
            # Absolute addresses only of the site itself (its canonical link).
            assert not external.match(url) or url.startswith(built.url + "/"), (page, tag, url)
        # Nor in inline scripts and styles: the page's text less its code column
        # (the app's page shows, as code, the CDN addresses it replaces)
        text = re.sub(r'<span class="literate-line"[^\n]*', "", page.read_text())
        for host in ("fonts.googleapis", "fonts.gstatic", "googletagmanager", "unpkg.com", "jsdelivr"):
            assert host not in text, (page, host)
    for css in site.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", css.read_text()), css
    # KaTeX's stylesheet and every font it names in woff2 are there; its
    # script is not: formulas are typeset when the site is built.
    katex = site / "assets" / "literate" / "katex"
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", (katex / "katex.min.css").read_text())
    assert len(fonts) > 10 and all((katex / font).is_file() for font in fonts)
    assert not (katex / "katex.min.js").exists()
    switch = (site / "labml_nn_switch" / "switch" / "index.html").read_text()
    assert "assets/literate/katex/katex.min.css" in switch
    scripts = [url for tag, url in parse_page(site / "labml_nn_switch" / "switch" / "index.html").resources
               if tag == "script"]
    assert scripts and not [url for url in scripts if "katex" in url or "literate.js" in url]
    # Every formula of the page is KaTeX's HTML, its TeX kept only in the MathML.
    n_math = switch.count('class="arithmatex"')
    assert n_math > 50 and "data-tex" not in switch
    assert len(re.findall(r'class="arithmatex"><span class="katex', switch)) == n_math
    assert switch.count('<annotation encoding="application/x-tex">') == n_math


def test_literate_pages_carry_title_and_description():
    site = require_real_site().path
    text = (site / "labml_nn_switch" / "switch" / "index.html").read_text()
    assert re.search(r'<meta name="description" content="[^"]*[Ss]witch', text)
    assert "<title>The Switch layer" in text


def test_results_page_plots_come_from_the_study_results():
    """The hook serves experiments/results/*.png as study/*.png; docs/ holds no link or copy of them."""
    site = require_real_site().path
    page = site / "results" / "index.html"
    plots = [src for tag, src in parse_page(page).resources if tag == "img" and "study/" in src]
    assert len(plots) >= 4
    for src in plots:
        served, _ = resolve_link(site, page, src)
        assert served.read_bytes() == (ROOT / "experiments" / "results" / served.name).read_bytes(), src
    assert not (ROOT / "docs" / "study").exists()
