"""
The site as a whole: the repository's site builds with `mkdocs build --strict`,
has a page per module, links and anchors that resolve, search over notes and
code, MathJax served from the site, and nothing loaded from elsewhere. Then
the plugin's errors and options, on small fixture projects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from site_fixtures import (
    ROOT, mkdocs_build, page_file, parse_page, real_site, require_real_site, resolve_link, write_project)

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
    assert site.path / "mkdocs-literate" / "mkdocs_literate" / "sections" / "index.html" in targets
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


def test_no_external_resources_and_mathjax_from_the_site():
    built = require_real_site()
    site = built.path
    external = re.compile(r"^(https?:)?//")
    for page in all_pages(site):
        for tag, url in parse_page(page).resources:
            # Absolute addresses only of the site itself (its canonical link).
            assert not external.match(url) or url.startswith(built.url + "/"), (page, tag, url)
        text = page.read_text()
        for host in ("fonts.googleapis", "fonts.gstatic", "googletagmanager", "unpkg.com", "jsdelivr"):
            assert host not in text, (page, host)
    for css in site.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", css.read_text()), css
    mathjax = site / "assets" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert any((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert (mathjax / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()
    switch = (site / "labml_nn_switch" / "switch" / "index.html").read_text()
    assert 'class="arithmatex"' in switch
    assert "assets/mathjax/tex-chtml.js" in switch
    assert switch.index("assets/literate/literate.js") < switch.index("assets/mathjax/tex-chtml.js")


def test_literate_pages_carry_title_and_description():
    site = require_real_site().path
    text = (site / "labml_nn_switch" / "switch" / "index.html").read_text()
    assert re.search(r'<meta name="description" content="[^"]*[Ss]witch', text)
    assert "<title>The Switch layer" in text


# ## Fixture projects: errors and options

def build(tmp_path, **kwargs):
    config = write_project(tmp_path, **kwargs)
    return mkdocs_build(config, tmp_path / "site")


def test_mini_project_builds_strict_with_default_sources(tmp_path):
    result = build(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("pkg/index.html", "pkg/layer/index.html", "pkg/helpers/index.html"):
        assert (tmp_path / "site" / page).is_file()


def test_broken_link_in_a_note_fails_the_strict_build(tmp_path):
    result = build(tmp_path, extra={"pkg/extra.py": '"""See [nothing](nothing.md)."""\n'})
    assert result.returncode != 0
    assert "nothing.md" in result.stderr + result.stdout


def test_broken_anchor_in_a_note_fails_the_strict_build(tmp_path):
    result = build(tmp_path, extra={"pkg/extra.py": '"""See [no](helpers.py#no_such_name)."""\n'})
    assert result.returncode != 0
    assert "no_such_name" in result.stderr + result.stdout


def test_unparseable_source_names_file_and_line(tmp_path):
    result = build(tmp_path, extra={"pkg/bad.py": "x = 1\n\ndef f(:\n    pass\n"})
    assert result.returncode != 0
    assert "pkg/bad.py:3:" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_source_names_itself(tmp_path):
    config = """
        site_name: Mini
        plugins:
          - literate:
              sources:
                - path: no_such_package
        """
    result = build(tmp_path, config=config)
    assert result.returncode != 0
    assert "no_such_package" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_module_in_order_names_itself(tmp_path):
    config = """
        site_name: Mini
        plugins:
          - literate:
              sources:
                - path: pkg
                  order: [layer, no_such_module]
        """
    result = build(tmp_path, config=config)
    assert result.returncode != 0
    assert "no_such_module" in result.stderr + result.stdout


def test_nav_order_sections_and_new_hand_written_pages(tmp_path):
    config = """
        site_name: Mini
        theme:
          name: mkdocs
        plugins:
          - literate:
              mathjax: false
              sources:
                - path: pkg
                  nav: The package
                  order: [layer]
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """
    result = build(tmp_path, config=config, extra={"docs/later.md": "# Added later\n"})
    assert result.returncode == 0, result.stdout + result.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    assert "The package" in home and "Added later" in home
    # `order` first (layer), then the package itself, then the rest by name.
    positions = [home.index(f'href="{p}"') for p in ("pkg/layer/", "pkg/", "pkg/helpers/")]
    assert positions == sorted(positions)
    assert not (tmp_path / "site" / "assets" / "mathjax").exists()


def test_serve_watches_the_sources(tmp_path):
    from mkdocs.config import load_config
    config_file = write_project(tmp_path)
    config = load_config(str(config_file))
    plugin = config.plugins["literate"]
    config = plugin.on_config(config)

    class Server:
        watched = []

        def watch(self, path, *args, **kwargs):
            self.watched.append(Path(path))

    server = plugin.on_serve(Server(), config=config, builder=None)
    assert (tmp_path / "pkg").resolve() in server.watched


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
