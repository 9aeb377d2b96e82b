"""
The site as a whole: the repository's site builds with `mkdocs build --strict`,
has a page per module, links and anchors that resolve, search over notes and
code (formulas as readable text, not TeX), KaTeX served from the site, and
nothing loaded from elsewhere. Then
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


def test_search_index_has_formulas_as_text_not_tex():
    site = require_real_site().path
    index = json.loads((site / "search" / "search_index.json").read_text())
    notes = [d for d in index["docs"] if d["location"].startswith("labml_nn_switch/")]
    text = " ".join(d["text"] for d in notes)
    # The Switch layer's formulas, readable: p_i(x) = softmax(h(x))_i, ∑, α ...
    assert "∑" in text and "α" in text
    for tex in ("\\(", "\\[", "\\frac", "\\sum", "\\alpha", "\\text{", "\\begin{", "$$"):
        assert tex not in text, (tex, text[max(0, text.find(tex) - 100):text.find(tex) + 100])


def test_no_external_resources_and_katex_from_the_site():
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
    katex = site / "assets" / "literate" / "katex"
    assert (katex / "katex.min.js").is_file()
    # Every font the stylesheet names in woff2 is there.
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", (katex / "katex.min.css").read_text())
    assert len(fonts) > 10 and all((katex / font).is_file() for font in fonts)
    switch = (site / "labml_nn_switch" / "switch" / "index.html").read_text()
    assert 'class="arithmatex" data-tex=' in switch
    assert "assets/literate/katex/katex.min.css" in switch
    assert switch.index("assets/literate/katex/katex.min.js") < switch.index("assets/literate/literate.js")


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
              math: false
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
    assert not (tmp_path / "site" / "assets" / "literate" / "katex").exists()
    assert "katex" not in home


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


def test_repository_links_edit_links_and_the_theme_template(tmp_path):
    config = """
        site_name: Mini
        repo_url: https://github.com/owner/mini
        theme:
          name: material
          font: false
          custom_dir: overrides
          features: [content.action.edit]
        plugins:
          - literate
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """
    (tmp_path / "overrides").mkdir()
    result = build(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "pkg" / "layer" / "index.html").read_text()
    # Lines link to the repository, the edit link goes to the source file, and
    # the header's repository link has no mark for the theme to fetch GitHub's API.
    assert re.search(r'class="literate-lineno" data-lineno="\d+" '
                     r'href="https://github.com/owner/mini/blob/main/pkg/layer.py#L\d+"', page)
    assert 'href="https://github.com/owner/mini/edit/main/pkg/layer.py"' in page
    assert 'class="md-source"' in page and 'data-md-component="source"' not in page
    # Our template comes after the user's own overrides, before the theme's.
    from mkdocs.config import load_config
    loaded = load_config(str(tmp_path / "mkdocs.yml"))
    dirs = loaded.plugins["literate"].on_config(loaded).theme.dirs
    assert Path(dirs[0]) == (tmp_path / "overrides").resolve()
    assert Path(dirs[1]).name == "templates" and Path(dirs[1]).parent.name == "mkdocs_literate"
